"""Training: TrainState, the data-parallel train and eval steps, and the loop.

Read top to bottom: state -> steps -> loop. Steps are `jax.jit` over the
('data',) mesh with the state replicated and the batch sharded; XLA inserts
the cross-device reductions, so BatchNorm statistics and gradients are those of
the global batch, exactly as on one device.
"""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from camjax import metrics as metrics_lib
from camjax import objectives, optim, parallel
from camjax.checkpoint import Checkpointer
from camjax.config_schema import selection_direction
from camjax.data import Splits, TrainBatches, eval_batches, normalize_images
from camjax.models import CLASSIFIER
from camjax.runlog import RunLog, Throughput, format_duration
from camjax.state import TrainState, forward, init_state, load_pretrained, model_from_config


def _objective_inputs(logits, features, labels, params, pos_rate) -> dict:
    return {'logits': logits, 'features': features, 'labels': labels, 'params': params,
            'classifier': params[CLASSIFIER], 'pos_rate': pos_rate}


# =============================================================================
# Steps
# =============================================================================
def make_train_step(model, objective, tx, *, mean, std, mesh, pos_rate=None, opt_slot=None):
    """Jitted `(state, batch) -> (state, metrics)`; the state is donated.
    `pos_rate` (K,) is the training split's positive rate (multi-label only).
    With `opt_slot`, `state.opt_state` is a dict and `tx` owns that entry (a
    refine run keeps one optimizer state per phase)."""

    def train_step(state: TrainState, batch: dict):
        images = normalize_images(batch['image'], mean=mean, std=std)
        weights = jnp.ones(images.shape[0], jnp.float32)

        def loss_fn(params):
            logits, features, batch_stats = forward(model, params, state.batch_stats, images,
                                                     train=True)
            inputs = _objective_inputs(logits, features, batch['label'], params, pos_rate)
            loss, terms = objective(inputs, weights)
            return loss, (terms, batch_stats, logits)

        (loss, (terms, batch_stats, logits)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        opt_state = state.opt_state if opt_slot is None else state.opt_state[opt_slot]
        updates, opt_state = tx.update(grads, opt_state, state.params)
        if opt_slot is not None:
            opt_state = {**state.opt_state, opt_slot: opt_state}
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean(metrics_lib.example_accuracy(logits=logits, labels=batch['label']))
        step_metrics = {'loss': loss, 'accuracy': accuracy,
                        **{f'loss/{name}': value for name, value in terms.items()}}
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                               opt_state=opt_state)
        return new_state, step_metrics

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(train_step, in_shardings=(replicated, sharded),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def make_eval_step(model, objective, *, num_classes: int, mean, std, mesh,
                   negative_cam_k: int = 0, pos_rate=None):
    """Jitted `(state, batch) -> sums` over the examples with mask 1. With
    `negative_cam_k`, also the peakiness of the top-k negative CAMs."""
    negative_cam_k = min(negative_cam_k, num_classes - 1)

    def eval_step(state: TrainState, batch: dict):
        images = normalize_images(batch['image'], mean=mean, std=std)
        logits, features, _ = forward(model, state.params, state.batch_stats, images,
                                       train=False)
        weights = batch['mask']
        inputs = _objective_inputs(logits, features, batch['label'], state.params, pos_rate)
        loss, terms = objective(inputs, weights)
        sums = metrics_lib.classification_sums(logits=logits, labels=batch['label'],
                                               weights=weights, num_classes=num_classes)
        count = sums['count']
        sums['loss'] = loss * count
        sums.update({f'loss/{name}': value * count for name, value in terms.items()})
        if negative_cam_k:
            peakiness = objectives.negative_cam_peakiness(inputs, negative_cam_k)
            sums['neg_cam_peak_minus_mean'] = jnp.sum(peakiness * weights)
        return sums

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(eval_step, in_shardings=(replicated, sharded), out_shardings=replicated)


def evaluate(eval_step, state, batches) -> dict:
    """Run `eval_step` over `batches` and summarize (float64 sums on host)."""
    total = None
    for batch in batches:
        sums = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(
            eval_step(state, batch)))
        total = sums if total is None else jax.tree.map(np.add, total, sums)
    return metrics_lib.summarize(total)


# =============================================================================
# Loop
# =============================================================================
@dataclasses.dataclass
class Plan:
    """Step counts derived from the config and the dataset size."""
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, train_cfg, num_train: int) -> 'Plan':
        steps_per_epoch = max(num_train // train_cfg.batch_size, 1)
        total = train_cfg.num_steps or math.ceil(train_cfg.num_epochs * steps_per_epoch)
        return cls(steps_per_epoch, total, train_cfg.eval_every or steps_per_epoch,
                   train_cfg.checkpoint_every or steps_per_epoch)


def _fresh_meta() -> dict:
    """Loop state saved with every checkpoint (the 'meta' item)."""
    return {'step': 0, 'best_score': None, 'best_step': None, 'evals_since_best': 0,
            'stopped_early': False}


def _better(score: float, best: float, direction: str) -> bool:
    """Strictly better: ties keep the earlier checkpoint. A NaN score is never
    better, and anything else beats a NaN best."""
    if math.isnan(score):
        return False
    if math.isnan(best):
        return True
    return score > best if direction == 'higher' else score < best


def _format_terms(values: dict) -> str:
    return ' '.join(f'{k.removeprefix("loss/")} {v:.4f}' for k, v in values.items()
                    if k.startswith('loss/'))


class Run:
    """Everything one training run builds from its config, and the loop.
    `camjax.refine.RefineRun` reuses all but the optimizer set-up and loop."""

    def __init__(self, config, workdir: str, splits: Splits):
        self.cfg_t, self.cfg_d, self.splits = config.train, config.dataset, splits
        self.mesh = parallel.make_mesh()
        self.model = model_from_config(config, num_classes=splits.num_classes)
        self.objective = objectives.build_objective(config.loss)
        self.log = RunLog(workdir)
        if splits.train_label_noise is not None:  # which training labels were flipped
            self.log.write_arrays('label_noise.npz', **splits.train_label_noise)
        self.step_kwargs = {'mean': tuple(self.cfg_d.mean), 'std': tuple(self.cfg_d.std),
                            'mesh': self.mesh, 'pos_rate': self._positive_rate(workdir)}
        self.eval_step = make_eval_step(self.model, self.objective,
                                        num_classes=splits.num_classes,
                                        negative_cam_k=self.cfg_t.eval_negative_cam_k,
                                        **self.step_kwargs)
        self.plan = Plan.from_config(self.cfg_t, splits.sizes['train'])
        self.setup_optimization(config)
        self.batches = TrainBatches(splits.train, cfg=self.cfg_d,
                                    global_batch=self.cfg_t.batch_size, seed=config.seed,
                                    sharding=parallel.batch_sharded(self.mesh))
        self.ckpt = Checkpointer(workdir, keep=self.cfg_t.keep_checkpoints)

    def setup_optimization(self, config) -> None:
        """The schedule, the train step and the fresh initial state."""
        self.schedule = optim.make_schedule(config.optimizer, total_steps=self.plan.total_steps,
                                            steps_per_epoch=self.plan.steps_per_epoch)
        tx = optim.make_optimizer(config.optimizer, self.schedule)
        self.train_step = make_train_step(self.model, self.objective, tx, **self.step_kwargs)
        self.initial_state = init_state(self.model, tx.init, seed=config.seed,
                                        image_size=self.cfg_d.image_size, mesh=self.mesh)

    def _positive_rate(self, workdir: str):
        """Multi-label runs compute the training split's positive rates once
        and keep them in label_stats.json, so a resumed run uses the same."""
        if not self.splits.multilabel:
            return None
        path = os.path.join(workdir, 'label_stats.json')
        if os.path.exists(path):
            with open(path) as f:
                return jnp.asarray(json.load(f)['positive_rate'], jnp.float32)
        rate = [float(r) for r in self.splits.positive_rate]
        self.log.write_json('label_stats.json', {
            'positive_rate': rate, 'class_names': list(self.splits.class_names)})
        return jnp.asarray(rate, jnp.float32)

    def evaluate_split(self, state, split: str) -> dict:
        return evaluate(self.eval_step, state, eval_batches(
            getattr(self.splits, split), cfg=self.cfg_d, global_batch=self.cfg_t.eval_batch_size,
            global_size=self.splits.sizes[split], sharding=parallel.batch_sharded(self.mesh)))

    def eval_record(self, state, step: int, *, splits=('val', 'test'), **extra) -> dict:
        record = {'kind': 'eval', 'step': step, 'epoch': step / self.plan.steps_per_epoch,
                  **extra}
        for split in splits:
            if getattr(self.splits, split) is not None:
                record[split] = self.evaluate_split(state, split)
        self.log.write(record)
        where = ''.join(f' {k} {v}' for k, v in extra.items())
        self.log.print(f'eval step {step}{where}: ' + ' | '.join(
            f'{s} acc {record[s]["accuracy"]:.4f} loss {record[s]["loss"]:.4f}'
            for s in splits if s in record))
        return record

    def update_selection(self, meta: dict, record: dict, state, step: int) -> None:
        """Keep the best checkpoint by validation (never test); early-stop on patience."""
        if 'val' not in record:
            return
        score = record['val'][self.cfg_t.selection_metric]
        if meta['best_score'] is None or _better(score, meta['best_score'],
                                                 selection_direction(self.cfg_t.selection_metric)):
            meta.update(best_score=score, best_step=step, evals_since_best=0)
            self.ckpt.save_best(step, state, meta=dict(meta))
            return
        meta['evals_since_best'] += 1
        patience = self.cfg_t.early_stopping_patience
        if patience and meta['evals_since_best'] >= patience:
            meta['stopped_early'] = True

    def test_best(self, state, meta: dict) -> dict | None:
        """Evaluate the best-by-validation checkpoint on test, once, at the end."""
        if meta['best_step'] is None:
            return None
        self.ckpt.wait()
        test = self.evaluate_split(self.ckpt.restore_best(state), 'test')
        record = {'kind': 'best', 'step': meta['best_step'], 'val_score': meta['best_score'],
                  'stopped_early': meta['stopped_early'], 'test': test}
        self.log.write(record)
        self.log.print(f'best checkpoint: step {meta["best_step"]} (val '
                       f'{self.cfg_t.selection_metric} {meta["best_score"]:.4f}) -> test '
                       f'accuracy {test["accuracy"]:.4f}'
                       + (' [early stopped]' if meta['stopped_early'] else ''))
        return record

    def log_window(self, window: dict, step: int, speed: Throughput, *, steps_in_window: int,
                   tag: str = '', **fields) -> None:
        """Log the mean of `window` (summed step metrics) plus `fields`."""
        means = {k: float(v) / steps_in_window for k, v in jax.device_get(window).items()}
        total = self.plan.total_steps
        images_per_s, eta = speed.tick(step, batch_size=self.cfg_t.batch_size,
                                       total_steps=total)
        self.log.write({'kind': 'train', 'step': step, **fields, 'images_per_s': images_per_s,
                        **means})
        accuracy = f' | acc {means["accuracy"]:.3f}' if 'accuracy' in means else ''
        self.log.print(f'step {step}/{total}{tag} | loss {means["loss"]:.4f} '
                       f'({_format_terms(means)}){accuracy} | '
                       f'{images_per_s:.0f} img/s | ETA {format_duration(eta)}')

    # A fine-tuning run may replace a classifier of another class count.
    new_classifier_ok = True

    def fresh_meta(self) -> dict:
        return _fresh_meta()

    def resume(self):
        """(state, meta) from the newest checkpoint, or fresh ones."""
        restored = self.ckpt.restore_latest(self.initial_state)
        if restored is None:
            state = self.initial_state
            if self.cfg_t.init_from:  # only a fresh run starts from another run's weights
                step = None if self.cfg_t.init_from_step < 0 else self.cfg_t.init_from_step
                state = load_pretrained(state, self.cfg_t.init_from, step,
                                        new_classifier_ok=self.new_classifier_ok)
                self.log.print(f'initialized from {self.cfg_t.init_from}')
            return state, self.fresh_meta()
        state, meta, data_state = restored
        self.batches.set_state(data_state)
        self.log.write({'kind': 'resume', 'step': meta['step']})
        self.log.print(f'resumed from step {meta["step"]}')
        return state, meta

    def loop(self, stop_after_steps: int | None):
        state, meta = self.resume()
        cfg_t, plan = self.cfg_t, self.plan
        done = meta['stopped_early'] or meta['step'] >= plan.total_steps
        if done:
            self.log.print(f'run is already complete at step {meta["step"]}')
        speed = Throughput(meta['step'])
        window, record, steps_this_run = None, None, 0
        while not done:
            state, step_metrics = self.train_step(state, next(self.batches))
            step = meta['step'] = meta['step'] + 1
            steps_this_run += 1
            # Summed on device: no host sync until the window is logged.
            window = step_metrics if window is None else jax.tree.map(jnp.add, window,
                                                                      step_metrics)
            if cfg_t.log_every and (step % cfg_t.log_every == 0 or step == plan.total_steps):
                self.log_window(window, step, speed,
                                steps_in_window=(step - 1) % cfg_t.log_every + 1,
                                lr=float(self.schedule(step - 1)))
                window = None
            if step % plan.eval_every == 0 or step == plan.total_steps:
                record = self.eval_record(state, step)
                self.update_selection(meta, record, state, step)
            done = meta['stopped_early'] or step >= plan.total_steps
            if done or step % plan.checkpoint_every == 0:
                self.ckpt.save(step, state, meta=meta, data_state=self.batches.get_state())
            if stop_after_steps is not None and steps_this_run >= stop_after_steps:
                return state, record
        if steps_this_run:
            record = self.test_best(state, meta) or record
        return state, record


def train_and_evaluate(config, workdir: str, splits: Splits, *,
                       stop_after_steps: int | None = None):
    """Train `config` in `workdir`, resuming from its newest checkpoint.

    `stop_after_steps` ends this invocation after that many steps without any
    extra save, as a kill would (used to test resumption).
    Returns (final TrainState, last eval or best-checkpoint record, or None).
    """
    return run_loop(Run(config, workdir, splits), stop_after_steps)


def run_loop(run: Run, stop_after_steps: int | None):
    """`run.loop(...)`, always finishing and closing its checkpoint saves."""
    try:
        return run.loop(stop_after_steps)
    finally:
        run.ckpt.wait()  # never leave a half-written save behind, even on errors
        run.ckpt.close()
