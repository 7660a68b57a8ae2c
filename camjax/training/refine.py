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

import jax
import jax.numpy as jnp
import optax
from etils import epath

from camjax import losses, parallel
from camjax.config import preflight
from camjax.data import normalize_images
from camjax.rundir import RunDir, read_records
from camjax.training import accumulate, collapse, nonfinite, optim
from camjax.training.interrupt import StopSignals
from camjax.training.loop import LoopState, Plan, RunParts, Window, due
from camjax.training.runlog import Throughput
from camjax.training.state import TrainState, forward, init_state
from camjax.training.train import jit_step, train_step_fn

PHASES = ('cls', 'linr')


# =============================================================================
# The LinR step
# =============================================================================
def log_prediction(logits, *, multilabel: bool, clipped: bool):
    """log f: (B, K) log-softmax, or (B, K, 2) [log s(z), log s(-z)] per
    attribute; `clipped` takes log(max(p, 1e-12)) of the probabilities
    instead (camjax before issue 22), whose gradient is 0 below the floor."""
    z = logits.astype(jnp.float32)
    if not clipped:
        return (jnp.stack([jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)], -1) if multilabel
                else jax.nn.log_softmax(z, axis=-1))
    p = jax.nn.sigmoid(z) if multilabel else jax.nn.softmax(z, axis=-1)
    return _floored_log(jnp.stack([p, 1.0 - p], -1) if multilabel else p)


def _floored_log(p):
    return jnp.log(jnp.maximum(p, losses.LOG_FLOOR))


def mixed_prediction(cfg, logits, perm, a, *, multilabel: bool):
    """log P2 (LinR paper, Eq. 6): a f(x) + b f(y) in probability space, or
    softmax(a z_x + b z_y) when refine.mix_space='logits'; LinRNM (Eq. 10) has
    no partner, a f(x) (or softmax(a z_x)). `a` is a scalar or (B, 1)."""
    nm = cfg.variant == 'linrnm'
    clipped = cfg.log_probs == 'clipped'
    if cfg.mix_space == 'logits':
        z = a * logits if nm else a * logits + (1.0 - a) * logits[perm]
        return log_prediction(z, multilabel=multilabel, clipped=clipped)
    log_p = log_prediction(logits, multilabel=multilabel, clipped=clipped)
    if nm and multilabel:  # Bernoulli(a p): log(a p) and log(1 - a p)
        return jnp.stack([_floored_log(a) + log_p[..., 0],
                          jnp.log1p(-a * jnp.exp(log_p[..., 0]))], -1)
    a = a[..., None] if multilabel and jnp.ndim(a) else a  # (B, 1, 1) against (B, K, 2)
    if nm:
        return _floored_log(a) + log_p
    if clipped:
        return _floored_log(a * jnp.exp(log_p) + (1.0 - a) * jnp.exp(log_p[perm]))
    # log(a p_x + b p_y) without leaving log space: exact where p underflows
    return jnp.logaddexp(_floored_log(a) + log_p, _floored_log(1.0 - a) + log_p[perm])


def linr_loss(model, refine_cfg, *, params, p2_params, batch_stats, images, key,
              multilabel: bool):
    """The LinR objective on one batch: (loss, (batch_stats, metrics)).

    `images` (B,H,W,3) are normalized; a ~ Beta(alpha, alpha), one per batch
    or one per example (refine.mix_per), b = 1 - a, and y = x[perm] for a
    random permutation of the batch (LinR paper, Eq. 6):
      P1 = f(a x + b y)                     with `params`; BN per refine.p1_batchnorm
      P2 = stop_gradient(a f(x) + b f(y))   with `p2_params`; per refine.p2_batchnorm
    (no stop-gradient when refine.p2_gradient, the Table 6 ablation), both as
    log-probabilities (`mixed_prediction`). LinRNM (Eq. 10) has no partner:
    P1 = f(a x), P2 = a f(x). LinRC (Eq. 9) scores only the classes with
    P2 > 1/K. BatchNorm's running statistics come back updated from the
    passes refine.running_stats_from names ('both': the clean, then the mixed).

    `metrics` holds 'scored_fraction' (LinRC's share of scored entries) and,
    for single-label data, the collapse measures of the clean predictions
    (`camjax.training.collapse`).

    The P2 passes of x and y are one forward pass of x alone: y is the same
    batch permuted, and an example's output depends only on itself (running
    statistics) or on the batch statistics, which the duplicated batch [x; y]
    shares with x. So f(y) = f(x)[perm] exactly, at half the cost of
    forwarding 2B images.
    """
    cfg = refine_cfg
    key_a, key_perm = jax.random.split(key)
    batch = images.shape[0]
    a = jax.random.beta(key_a, cfg.alpha, cfg.alpha,
                        shape=(batch, 1) if cfg.mix_per == 'example' else ())
    perm = jax.random.permutation(key_perm, batch)
    a_image = a[:, :, None, None] if cfg.mix_per == 'example' else a
    mixed = a_image * images if cfg.variant == 'linrnm' else (
        a_image * images + (1.0 - a_image) * images[perm])

    stats_from = cfg.running_stats_from
    logits, _, clean_stats = forward(model, p2_params, batch_stats, images,
                                     train=cfg.p2_batchnorm == 'batch')
    log_p2 = mixed_prediction(cfg, logits, perm, a, multilabel=multilabel)
    if not cfg.p2_gradient:
        log_p2 = jax.lax.stop_gradient(log_p2)
    metrics = {} if multilabel else collapse.measures(logits=jax.lax.stop_gradient(logits))

    start = clean_stats if stats_from in ('clean', 'both') else batch_stats
    mixed_logits, _, mixed_stats = forward(model, params, start, mixed,
                                           train=cfg.p1_batchnorm == 'batch')
    log_p1 = log_prediction(mixed_logits, multilabel=multilabel,
                            clipped=cfg.log_probs == 'clipped')
    where = losses.linr_confidence_mask(log_p2=log_p2) if cfg.variant == 'linrc' else None
    loss = jnp.mean(losses.linr_divergence(log_p1=log_p1, log_p2=log_p2, dis=cfg.dis,
                                           direction=cfg.direction, reduction=cfg.reduction,
                                           where=where))
    metrics['scored_fraction'] = (jnp.float32(1) if where is None
                                  else jnp.mean(where.astype(jnp.float32)))
    new_stats = {'mixed': mixed_stats, 'both': mixed_stats, 'clean': clean_stats,
                 'none': batch_stats}[stats_from]
    return loss, (new_stats, metrics)


def make_linr_step(model, tx, refine_cfg, *, seed: int, mean, std, mesh, multilabel: bool,
                   skip_nonfinite: bool = False, grad_accum_steps: int = 1):
    """Jitted `(state, batch) -> (state, metrics)` minimizing `linr_loss` on
    the batch's images (labels are never read), with the non-finite guard;
    the state is donated and `tx` owns `state.opt_state['linr']`. The
    randomness is a function of (seed, step), so a resumed run repeats it
    exactly. `grad_accum_steps` > 1 averages the gradient over that many
    microbatches (`camjax.training.accumulate`), each mixed within itself
    with its own (a, permutation)."""

    def linr_step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.key(seed), state.step)

        def loss_fn(params, batch_stats, micro):
            # Each microbatch its own draw: the index rides along in the batch.
            loss, (batch_stats, metrics) = linr_loss(
                model, refine_cfg, params=params, p2_params=params, batch_stats=batch_stats,
                images=normalize_images(micro['image'], mean=mean, std=std),
                key=jax.random.fold_in(key, micro['micro'][0]) if grad_accum_steps > 1 else key,
                multilabel=multilabel)
            return loss, (batch_stats, {'loss': loss, 'loss/linr': loss, **metrics})

        micro_index = jnp.arange(batch['image'].shape[0], dtype=jnp.int32) % grad_accum_steps
        (_, (batch_stats, step_metrics)), grads = accumulate.value_and_grad(
            loss_fn, state.params, state.batch_stats,
            {'image': batch['image'], 'micro': micro_index}, steps=grad_accum_steps)
        updates, linr_opt = tx.update(grads, state.opt_state['linr'], state.params)
        new_state = TrainState(step=state.step + 1,
                               params=optax.apply_updates(state.params, updates),
                               batch_stats=batch_stats,
                               opt_state={**state.opt_state, 'linr': linr_opt})
        return new_state, step_metrics

    return jit_step(nonfinite.guard_step(linr_step, skip=skip_nonfinite), mesh)


# =============================================================================
# The refine run (LinR paper, Algorithm 1)
# =============================================================================
def make_cls_step(model, objective, tx, *, mean, std, mesh, pos_rate=None,
                  skip_nonfinite: bool = False, grad_accum_steps: int = 1):
    """Jitted classification step of a refine run: the training step on
    `state.opt_state['cls']`, leaving the LinR optimizer's state alone, with
    the non-finite guard."""
    inner = train_step_fn(model, objective, tx, mean=mean, std=std, pos_rate=pos_rate,
                          grad_accum_steps=grad_accum_steps)

    def cls_step(state: TrainState, batch):
        stepped, step_metrics = inner(state.replace(opt_state=state.opt_state['cls']), batch)
        return (stepped.replace(opt_state={**state.opt_state, 'cls': stepped.opt_state}),
                step_metrics)

    return jit_step(nonfinite.guard_step(cls_step, skip=skip_nonfinite), mesh)


def _phase_steps(refine_cfg, steps_per_epoch: int) -> dict:
    return {'cls': steps_per_epoch if refine_cfg.cls_steps == -1 else refine_cfg.cls_steps,
            'linr': steps_per_epoch if refine_cfg.linr_steps == -1 else refine_cfg.linr_steps}


def refine(config, workdir: str, splits, *, stop_after_steps: int | None = None,
           eval_splits=('val', 'test')):
    """Refine `train.init_from` with LinR in `workdir` (LinR paper, Algorithm
    1), resuming from its newest checkpoint. Returns (final TrainState, last
    eval or best record). `stop_after_steps` ends this invocation early, as a
    kill would."""
    preflight.check_inputs(config, splits)
    r = config.refine
    phases = ('linr',) if r.variant == 'linrnl' else PHASES
    per_epoch = Plan.from_config(config.train, splits.sizes['train']).steps_per_epoch
    phase_steps = _phase_steps(r, per_epoch)
    parts = RunParts(config, workdir, splits,
                     total_steps=r.rounds * sum(phase_steps[p] for p in phases))
    try:
        txs, schedules = {}, {}
        for phase, cfg in (('cls', r.cls_optimizer), ('linr', r.linr_optimizer)):
            schedules[phase] = optim.make_schedule(cfg, total_steps=r.rounds * phase_steps[phase],
                                                   steps_per_epoch=per_epoch,
                                                   batch_size=config.train.batch_size)
            txs[phase] = optim.make_optimizer(cfg, schedules[phase])
        step_options = {'skip_nonfinite': config.train.skip_nonfinite_updates,
                        'grad_accum_steps': config.train.grad_accum_steps, **parts.step_kwargs}
        steps = {'cls': make_cls_step(parts.model, parts.objective, txs['cls'],
                                      pos_rate=parts.pos_rate, **step_options),
                 'linr': make_linr_step(parts.model, txs['linr'], r, seed=config.seed,
                                        multilabel=splits.multilabel, **step_options)}
        initial = init_state(parts.model, lambda p: {ph: tx.init(p) for ph, tx in txs.items()},
                             seed=config.seed, image_size=config.dataset.image_size,
                             mesh=parts.mesh)
        fresh = LoopState(phase=phases[0], steps_run={p: 0 for p in PHASES})
        state, loop = parts.resume(initial, fresh, new_classifier_ok=False)
        record = None
        if not loop.baseline_done:  # round 0: the restored model
            record = parts.evaluate_and_select(loop, state, splits=eval_splits, round=0)
            loop.baseline_done = True
        if loop.round >= r.rounds or loop.stopped_early:
            parts.log.print(f'refinement is already complete after round {loop.round}')
        log_every, save_every = config.train.log_every, config.train.checkpoint_every
        speed, window, steps_this_run = Throughput(loop.step), Window(loop), 0
        guard = r.collapse_guard and not splits.multilabel
        streak = jnp.asarray(loop.collapse_streak, jnp.int32)  # collapsed LinR steps in a row
        fresh_opt_state = {ph: jax.jit(tx.init, out_shardings=parallel.replicated(parts.mesh))
                           for ph, tx in txs.items()}
        with StopSignals() as stops:
            while loop.round < r.rounds and not loop.stopped_early:
                phase = loop.phase
                if loop.phase_step == 0:
                    streak = jnp.zeros((), jnp.int32)
                    if r.reset_optimizer:
                        state = state.replace(opt_state={
                            **state.opt_state, phase: fresh_opt_state[phase](state.params)})
                state, step_metrics = steps[phase](state, parts.next_batch(window))
                loop.step += 1
                loop.phase_step += 1
                loop.steps_run[phase] += 1
                steps_this_run += 1
                window.add(step_metrics)
                collapsed = None
                if guard and phase == 'linr':
                    streak = collapse.extend_streak(streak, step_metrics, r.collapse_share)
                    if (due(loop.phase_step, r.collapse_window)
                            and int(streak) >= r.collapse_window):
                        collapsed = collapse.describe(step_metrics)
                phase_done = loop.phase_step == phase_steps[phase] or collapsed is not None
                log = log_every and (due(loop.phase_step, log_every) or phase_done)
                stop = stops.requested(loop.step)
                save = phase_done or due(loop.step, save_every)
                if log or save or stop:
                    parts.check_finite(window, loop)
                if log:
                    parts.log_window(window, loop, speed,
                                     tag=f' | round {loop.round + 1} {phase}',
                                     round=loop.round + 1, phase=phase,
                                     lr=float(schedules[phase](loop.steps_run[phase] - 1)))
                if collapsed is not None:
                    _report_collapse(parts, loop, r, collapsed)
                if phase_done:  # on to the next phase; after the last, evaluate the round
                    loop.phase_step = 0
                    index = phases.index(phase)
                    if index + 1 < len(phases):
                        loop.phase = phases[index + 1]
                    else:
                        loop.phase, loop.round = phases[0], loop.round + 1
                        record = parts.evaluate_and_select(loop, state, splits=eval_splits,
                                                           round=loop.round)
                finished = loop.round >= r.rounds or loop.stopped_early
                if save or stop:
                    loop.collapse_streak = int(streak)
                parts.end_step(state, loop, window, stop=None if finished else stop,
                               save=save)
                if stop_after_steps is not None and steps_this_run >= stop_after_steps:
                    return state, record
        return state, parts.report_best(state, loop) or record
    finally:
        parts.close()


def _report_collapse(parts, loop, refine_cfg, measures: dict) -> None:
    """One line and a `collapse` record: the LinR phase ends here."""
    parts.log.write({'kind': 'collapse', 'step': loop.step, 'round': loop.round + 1,
                     'phase': loop.phase, 'phase_step': loop.phase_step,
                     'threshold': refine_cfg.collapse_share, 'window': refine_cfg.collapse_window,
                     **measures})
    parts.log.print(
        f'collapse: round {loop.round + 1} LinR phase ended at step {loop.step} (phase step '
        f'{loop.phase_step}): top-class share >= {refine_cfg.collapse_share} on '
        f'{refine_cfg.collapse_window} steps in a row (now {measures["top_class_share"]:.3f}; '
        f'batch-mean entropy {measures["mean_prediction_entropy"]:.3f} nats, mean max-prob '
        f'{measures["mean_max_prob"]:.3f})')


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
        sub_dir = str(epath.Path(workdir) / f'step_{step}')
        if jax.process_index() == 0:
            print(f'sweep: refining step {step} of {source}', flush=True)
        refine(sub_config, sub_dir, splits, eval_splits=('train', 'val', 'test'))
        rows.append(sweep_report.row_from_records(
            read_records(sub_dir), step=step, epoch=step / per_epoch))
    if jax.process_index() != 0:
        return {'rows': rows}
    return sweep_report.write(workdir, rows)


def _steps_per_epoch(config, source: str, num_train: int) -> int:
    """Steps per epoch of the training run in `source`: its config.json's
    batch size (else ours) over the training split's size."""
    saved = RunDir(source).saved_config()
    batch = saved.train.batch_size if saved is not None else config.train.batch_size
    return max(num_train // batch, 1)
