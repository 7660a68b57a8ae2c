"""LinR refinement of a trained camjax run ("LinR paper": "Linear
Regularization: An easy approach to refine your model").

Read top to bottom: the LinR step -> the refine run (Algorithm 1) -> the
sweet-point sweep (Sec. 4.8). A refine run restores only the model variables
of `train.init_from`, then for each of T rounds runs N_cls classification
steps (config.loss, refine.cls_optimizer) and N_LinR LinR steps
(refine.linr_optimizer), evaluating after every round. It is checkpointed and
resumable at (round, phase, step), and keeps the best round by validation.
"""

import copy
import json
import os

import jax
import jax.numpy as jnp
import optax

from camjax import losses, optim, parallel, preflight
from camjax.data import normalize_images
from camjax.runlog import Throughput, read_records
from camjax.state import TrainState, forward, init_state
from camjax.train import Run, make_train_step, run_loop

PHASES = ('cls', 'linr')


# =============================================================================
# The LinR step
# =============================================================================
def linr_loss(model, refine_cfg, *, params, p2_params, batch_stats, images, key,
              multilabel: bool):
    """The LinR objective on one batch: (loss, (batch_stats, scored_fraction)).

    `images` (B,H,W,3) are normalized; one a ~ Beta(alpha, alpha) per batch,
    b = 1 - a, and y = x[perm] for a random permutation of the batch (LinR
    paper, Eq. 6):
      P1 = f(a x + b y)                with `params`; BatchNorm per refine.p1_batchnorm
      P2 = stop_gradient(a f(x) + b f(y))   with `p2_params`; per refine.p2_batchnorm
    (no stop-gradient when refine.p2_gradient, the Table 6 ablation). LinRNM
    (Eq. 10) has no partner: P1 = f(a x), P2 = a f(x). LinRC (Eq. 9) scores
    only the classes with P2 > 1/K. `batch_stats` come back updated by the P1
    pass when it uses batch statistics.

    The P2 passes of x and y are one forward pass of x alone: y is the same
    batch permuted, and an example's output depends only on itself (running
    statistics) or on the batch statistics, which the duplicated batch [x; y]
    shares with x. So f(y) = f(x)[perm] exactly, at half the cost of
    forwarding 2B images.
    """
    cfg = refine_cfg
    predict = jax.nn.sigmoid if multilabel else jax.nn.softmax
    no_mixing = cfg.variant == 'linrnm'
    key_a, key_perm = jax.random.split(key)
    a = jax.random.beta(key_a, cfg.alpha, cfg.alpha)
    perm = jax.random.permutation(key_perm, images.shape[0])
    mixed = a * images if no_mixing else a * images + (1.0 - a) * images[perm]

    logits, _, _ = forward(model, p2_params, batch_stats, images,
                           train=cfg.p2_batchnorm == 'batch')
    p = predict(logits.astype(jnp.float32))
    p2 = a * p if no_mixing else a * p + (1.0 - a) * p[perm]
    if not cfg.p2_gradient:
        p2 = jax.lax.stop_gradient(p2)

    logits, _, batch_stats = forward(model, params, batch_stats, mixed,
                                     train=cfg.p1_batchnorm == 'batch')
    p1 = predict(logits.astype(jnp.float32))
    mask = losses.linr_confidence_mask(p2=p2) if cfg.variant == 'linrc' else None
    loss = losses.linr_divergence(p1=p1, p2=p2, dis=cfg.dis, direction=cfg.direction,
                                  mask=mask, multilabel=multilabel)
    scored = jnp.mean(mask.astype(jnp.float32)) if mask is not None else jnp.float32(1)
    return loss, (batch_stats, scored)


def make_linr_step(model, tx, refine_cfg, *, seed: int, mean, std, mesh, multilabel: bool):
    """Jitted `(state, images uint8 (B,H,W,3)) -> (state, metrics)` minimizing
    `linr_loss`; the state is donated and `tx` owns `state.opt_state['linr']`.
    Labels are never read. The randomness is a function of (seed, step), so a
    resumed run repeats it exactly."""

    def linr_step(state: TrainState, images):
        key = jax.random.fold_in(jax.random.key(seed), state.step)

        def loss_fn(params):
            return linr_loss(model, refine_cfg, params=params, p2_params=params,
                             batch_stats=state.batch_stats,
                             images=normalize_images(images, mean=mean, std=std), key=key,
                             multilabel=multilabel)

        (loss, (batch_stats, scored)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, linr_opt = tx.update(grads, state.opt_state['linr'], state.params)
        new_state = TrainState(step=state.step + 1,
                               params=optax.apply_updates(state.params, updates),
                               batch_stats=batch_stats,
                               opt_state={**state.opt_state, 'linr': linr_opt})
        return new_state, {'loss': loss, 'loss/linr': loss, 'scored_fraction': scored}

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(linr_step, in_shardings=(replicated, sharded),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


# =============================================================================
# The refine run (LinR paper, Algorithm 1)
# =============================================================================
class RefineRun(Run):
    """A `train.Run` with two optimizers and the round / phase loop."""

    new_classifier_ok = False  # refining continues the very same model

    def __init__(self, config, workdir: str, splits, *, eval_splits=('val', 'test')):
        self.cfg_r, self.seed, self.eval_splits = config.refine, config.seed, eval_splits
        super().__init__(config, workdir, splits)

    def setup_optimization(self, config) -> None:
        r, per_epoch = self.cfg_r, self.plan.steps_per_epoch
        self.phases = ('linr',) if r.variant == 'linrnl' else PHASES
        self.phase_steps = {'cls': per_epoch if r.cls_steps == -1 else r.cls_steps,
                            'linr': per_epoch if r.linr_steps == -1 else r.linr_steps}
        self.plan.total_steps = r.rounds * sum(self.phase_steps[p] for p in self.phases)

        def optimizer(cfg, phase):
            schedule = optim.make_schedule(cfg, total_steps=r.rounds * self.phase_steps[phase],
                                           steps_per_epoch=per_epoch)
            return optim.make_optimizer(cfg, schedule), schedule

        (cls_tx, cls_lr), (linr_tx, linr_lr) = (optimizer(r.cls_optimizer, 'cls'),
                                                optimizer(r.linr_optimizer, 'linr'))
        self.learning_rates = {'cls': cls_lr, 'linr': linr_lr}
        self.train_step = make_train_step(self.model, self.objective, cls_tx, opt_slot='cls',
                                          **self.step_kwargs)
        kwargs = {k: v for k, v in self.step_kwargs.items() if k != 'pos_rate'}
        self.linr_step = make_linr_step(self.model, linr_tx, r, seed=self.seed,
                                        multilabel=self.splits.multilabel, **kwargs)
        self.initial_state = init_state(
            self.model, lambda p: {'cls': cls_tx.init(p), 'linr': linr_tx.init(p)},
            seed=self.seed, image_size=self.cfg_d.image_size, mesh=self.mesh)

    def fresh_meta(self) -> dict:
        return {**super().fresh_meta(), 'round': 0, 'phase': self.phases[0], 'phase_step': 0,
                'steps_run': {p: 0 for p in PHASES}, 'baseline_done': False}

    def round_record(self, state, meta) -> dict:
        """Evaluate after round meta['round'] (0 = the restored model) and keep
        the best round by validation."""
        record = self.eval_record(state, meta['step'], splits=self.eval_splits,
                                  round=meta['round'])
        self.update_selection(meta, record, state, meta['step'])
        return record

    def run_step(self, phase: str, state, batch):
        if phase == 'cls':
            return self.train_step(state, batch)
        return self.linr_step(state, batch['image'])

    def advance(self, meta: dict, state):
        """Move meta past a finished phase; after the last one, evaluate the round."""
        meta['phase_step'] = 0
        index = self.phases.index(meta['phase'])
        if index + 1 < len(self.phases):
            meta['phase'] = self.phases[index + 1]
            return None
        meta['phase'], meta['round'] = self.phases[0], meta['round'] + 1
        return self.round_record(state, meta)

    def loop(self, stop_after_steps: int | None):
        state, meta = self.resume()
        record, rounds = None, self.cfg_r.rounds
        if not meta['baseline_done']:
            record = self.round_record(state, meta)
            meta['baseline_done'] = True
        if meta['round'] >= rounds or meta['stopped_early']:
            self.log.print(f'refinement is already complete after round {meta["round"]}')
        speed, steps_this_run = Throughput(meta['step']), 0
        log_every, save_every = self.cfg_t.log_every, self.cfg_t.checkpoint_every
        while meta['round'] < rounds and not meta['stopped_early']:
            phase, this_round, window = meta['phase'], meta['round'], None
            while (meta['phase'], meta['round']) == (phase, this_round):
                state, step_metrics = self.run_step(phase, state, next(self.batches))
                meta['step'] += 1
                meta['phase_step'] += 1
                meta['steps_run'][phase] += 1
                steps_this_run += 1
                window = step_metrics if window is None else jax.tree.map(
                    jnp.add, window, step_metrics)
                done_phase = meta['phase_step'] == self.phase_steps[phase]
                if log_every and (meta['phase_step'] % log_every == 0 or done_phase):
                    self.log_window(window, meta['step'], speed,
                                    steps_in_window=(meta['phase_step'] - 1) % log_every + 1,
                                    tag=f' | round {meta["round"] + 1} {phase}',
                                    round=meta['round'] + 1, phase=phase,
                                    lr=float(self.learning_rates[phase](
                                        meta['steps_run'][phase] - 1)))
                    window = None
                if done_phase:
                    record = self.advance(meta, state) or record
                if done_phase or (save_every and meta['step'] % save_every == 0):
                    self.ckpt.save(meta['step'], state, meta=meta,
                                   data_state=self.batches.get_state())
                if stop_after_steps is not None and steps_this_run >= stop_after_steps:
                    return state, record
        if steps_this_run:
            record = self.test_best(state, meta) or record
        return state, record


def refine(config, workdir: str, splits, *, stop_after_steps: int | None = None):
    """Refine `train.init_from` with LinR in `workdir`, resuming from its
    newest checkpoint. Returns (final TrainState, last eval or best record).
    `stop_after_steps` ends this invocation early, as a kill would."""
    preflight.check_inputs(config, splits)
    return run_loop(RefineRun(config, workdir, splits), stop_after_steps)


# =============================================================================
# The sweet-point sweep (LinR paper, Sec. 4.8)
# =============================================================================
def sweep(config, workdir: str, splits) -> dict:
    """Refine every checkpoint saved by the training run `train.init_from`
    with LinRNL for refine.rounds rounds, each in `workdir/step_<S>/`
    (resumable: finished ones are skipped), then write the table, the two
    figures and the sweet point (`camjax.analysis.sweep`)."""
    from camjax.analysis import sweep as sweep_report
    from camjax.checkpoint import saved_steps

    preflight.check_inputs(config, splits)
    source = config.train.init_from
    steps = saved_steps(source)
    per_epoch = _steps_per_epoch(config, source, splits.sizes['train'])
    rows = []
    for step in steps:
        sub_config = copy.deepcopy(config)
        sub_config.train.init_from_step = step
        sub_dir = os.path.join(workdir, f'step_{step}')
        os.makedirs(sub_dir, exist_ok=True)
        run = RefineRun(sub_config, sub_dir, splits, eval_splits=('train', 'val', 'test'))
        run.log.print(f'sweep: refining step {step} of {source}')
        run_loop(run, None)
        rows.append(sweep_report.row_from_records(
            read_records(sub_dir), step=step, epoch=step / per_epoch))
    if jax.process_index() != 0:
        return {'rows': rows}
    return sweep_report.write(workdir, rows)


def _steps_per_epoch(config, source: str, num_train: int) -> int:
    """Steps per epoch of the training run in `source`: its config.json's
    batch size (else ours) over the training split's size."""
    batch = config.train.batch_size
    path = os.path.join(source, 'config.json')
    if os.path.exists(path):
        with open(path) as f:
            batch = json.load(f).get('train', {}).get('batch_size', batch)
    return max(num_train // batch, 1)
