"""Training: TrainState, the data-parallel train and eval steps, and the loop.

Read top to bottom: state -> steps -> loop. Steps are `jax.jit` over the
('data',) mesh with the state replicated and the batch sharded; XLA inserts
the cross-device reductions, so BatchNorm statistics and gradients are those of
the global batch, exactly as on one device.
"""

import dataclasses
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from camjax import metrics as metrics_lib
from camjax import objectives, optim, parallel
from camjax.checkpoint import Checkpointer
from camjax.data import Splits, TrainBatches, eval_batches, normalize_images
from camjax.models import CLASSIFIER, build_model
from camjax.runlog import RunLog, Throughput, format_duration


# =============================================================================
# State
# =============================================================================
@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def model_kwargs(model_cfg) -> dict:
    return {k: v for k, v in model_cfg.items() if k != 'name'}


def init_state(model, tx, *, seed: int, image_size: int, mesh) -> TrainState:
    """Fresh state, replicated on the mesh. Identical on every process (same seed)."""
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init(jax.random.key(seed), dummy, train=False)
    params = variables['params']
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       batch_stats=variables.get('batch_stats', {}),
                       opt_state=tx.init(params))
    return jax.device_put(state, parallel.replicated(mesh))


def _forward(model, params, batch_stats, images, *, train: bool):
    variables = {'params': params, 'batch_stats': batch_stats}
    if train:
        (logits, features), updates = model.apply(variables, images, train=True,
                                                  mutable=['batch_stats'])
        return logits, features, updates.get('batch_stats', {})
    logits, features = model.apply(variables, images, train=False)
    return logits, features, batch_stats


def _objective_inputs(logits, features, labels, params) -> dict:
    return {'logits': logits, 'features': features, 'labels': labels, 'params': params,
            'classifier': params[CLASSIFIER]}


# =============================================================================
# Steps
# =============================================================================
def make_train_step(model, objective, tx, *, mean, std, mesh):
    """Jitted `(state, batch) -> (state, metrics)`; the state is donated."""

    def train_step(state: TrainState, batch: dict):
        images = normalize_images(batch['image'], mean=mean, std=std)
        weights = jnp.ones(images.shape[0], jnp.float32)

        def loss_fn(params):
            logits, features, batch_stats = _forward(model, params, state.batch_stats, images,
                                                     train=True)
            inputs = _objective_inputs(logits, features, batch['label'], params)
            loss, terms = objective(inputs, weights)
            return loss, (terms, batch_stats, logits)

        (loss, (terms, batch_stats, logits)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean(metrics_lib.topk_correct(logits=logits, labels=batch['label'], k=1))
        step_metrics = {'loss': loss, 'accuracy': accuracy,
                        **{f'loss/{name}': value for name, value in terms.items()}}
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                               opt_state=opt_state)
        return new_state, step_metrics

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(train_step, in_shardings=(replicated, sharded),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def make_eval_step(model, objective, *, num_classes: int, mean, std, mesh):
    """Jitted `(state, batch) -> sums` over the examples with mask 1."""

    def eval_step(state: TrainState, batch: dict):
        images = normalize_images(batch['image'], mean=mean, std=std)
        logits, features, _ = _forward(model, state.params, state.batch_stats, images,
                                       train=False)
        weights = batch['mask']
        inputs = _objective_inputs(logits, features, batch['label'], state.params)
        loss, terms = objective(inputs, weights)
        sums = metrics_lib.classification_sums(logits=logits, labels=batch['label'],
                                               weights=weights, num_classes=num_classes)
        count = sums['count']
        sums['loss'] = loss * count
        sums.update({f'loss/{name}': value * count for name, value in terms.items()})
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
    return {'step': 0, 'best_score': None, 'best_step': None, 'evals_since_best': 0,
            'stopped_early': False}


def _format_terms(values: dict) -> str:
    return ' '.join(f'{k.removeprefix("loss/")} {v:.4f}' for k, v in values.items()
                    if k.startswith('loss/'))


def train_and_evaluate(config, workdir: str, splits: Splits, *,
                       stop_after_steps: int | None = None) -> dict:
    """Train `config` in `workdir`, resuming from its newest checkpoint.

    `stop_after_steps` ends this invocation after that many steps without any
    extra save, as a kill would (used to test resumption).
    Returns (final TrainState, last eval record or None).
    """
    cfg_t, cfg_d = config.train, config.dataset
    mesh = parallel.make_mesh()
    plan = Plan.from_config(cfg_t, splits.sizes['train'])
    schedule = optim.make_schedule(config.optimizer, total_steps=plan.total_steps,
                                   steps_per_epoch=plan.steps_per_epoch)
    tx = optim.make_optimizer(config.optimizer, schedule)
    model = build_model(config.model.name, num_classes=splits.num_classes,
                        **model_kwargs(config.model))
    objective = objectives.build_objective(config.loss)
    norm = {'mean': tuple(cfg_d.mean), 'std': tuple(cfg_d.std)}
    train_step = make_train_step(model, objective, tx, mesh=mesh, **norm)
    eval_step = make_eval_step(model, objective, num_classes=splits.num_classes, mesh=mesh,
                               **norm)

    state = init_state(model, tx, seed=config.seed, image_size=cfg_d.image_size, mesh=mesh)
    batches = TrainBatches(splits.train, cfg=cfg_d, global_batch=cfg_t.batch_size,
                           seed=config.seed, sharding=parallel.batch_sharded(mesh))
    ckpt = Checkpointer(workdir, keep=cfg_t.keep_checkpoints)
    log = RunLog(workdir)
    meta = _fresh_meta()
    restored = ckpt.restore_latest(state)
    if restored is not None:
        state, meta, data_state = restored
        batches.set_state(data_state)
        log.write({'kind': 'resume', 'step': meta['step']})
        log.print(f'resumed from step {meta["step"]} in {workdir}')

    def run_eval(step):
        record = {'kind': 'eval', 'step': step, 'epoch': step / plan.steps_per_epoch}
        for split in ('val', 'test'):
            source = getattr(splits, split)
            if source is not None:
                record[split] = evaluate(eval_step, state, eval_batches(
                    source, cfg=cfg_d, global_batch=cfg_t.eval_batch_size,
                    global_size=splits.sizes[split], sharding=parallel.batch_sharded(mesh)))
        log.write(record)
        log.print(f'eval step {step}: ' + ' | '.join(
            f'{s} acc {record[s]["accuracy"]:.4f} loss {record[s]["loss"]:.4f}'
            for s in ('val', 'test') if s in record))
        return record

    done = meta['stopped_early'] or meta['step'] >= plan.total_steps
    if done:
        log.print(f'{workdir} is already complete at step {meta["step"]}')
    speed = Throughput(meta['step'])
    window, last_record, steps_this_run = None, None, 0
    while not done:
        state, step_metrics = train_step(state, next(batches))
        step = meta['step'] = meta['step'] + 1
        steps_this_run += 1
        window = step_metrics if window is None else jax.tree.map(jnp.add, window,
                                                                  step_metrics)
        window_len = (step - 1) % cfg_t.log_every + 1 if cfg_t.log_every else 0
        if cfg_t.log_every and (step % cfg_t.log_every == 0 or step == plan.total_steps):
            means = {k: float(v) / window_len for k, v in jax.device_get(window).items()}
            window = None
            images_per_s, eta = speed.tick(step, batch_size=cfg_t.batch_size,
                                           total_steps=plan.total_steps)
            log.write({'kind': 'train', 'step': step, 'lr': float(schedule(step - 1)),
                       'images_per_s': images_per_s, **means})
            log.print(f'step {step}/{plan.total_steps} | loss {means["loss"]:.4f} '
                      f'({_format_terms(means)}) | acc {means["accuracy"]:.3f} | '
                      f'{images_per_s:.0f} img/s | ETA {format_duration(eta)}')
        if step % plan.eval_every == 0 or step == plan.total_steps:
            last_record = run_eval(step)
            _update_selection(meta, last_record, cfg_t, ckpt, state, step)
        done = meta['stopped_early'] or step >= plan.total_steps
        if done or step % plan.checkpoint_every == 0:
            ckpt.save(step, state, meta=meta, data_state=batches.get_state())
        if stop_after_steps is not None and steps_this_run >= stop_after_steps and not done:
            ckpt.wait()
            ckpt.close()
            return state, last_record
    ckpt.wait()
    if steps_this_run:
        last_record = _final_test_of_best(ckpt, state, eval_step, splits, cfg_d, cfg_t, mesh,
                                          meta, log) or last_record
    ckpt.close()
    return state, last_record


def _update_selection(meta, record, cfg_t, ckpt, state, step):
    """Keep the best checkpoint by validation (never test); early-stop on patience."""
    if 'val' not in record:
        return
    score = record['val'][cfg_t.selection_metric]
    if meta['best_score'] is None or score > meta['best_score']:
        meta.update(best_score=score, best_step=step, evals_since_best=0)
        ckpt.save_best(step, state, meta=dict(meta))
        return
    meta['evals_since_best'] += 1
    if cfg_t.early_stopping_patience and \
            meta['evals_since_best'] >= cfg_t.early_stopping_patience:
        meta['stopped_early'] = True


def _final_test_of_best(ckpt, state, eval_step, splits, cfg_d, cfg_t, mesh, meta, log):
    if meta['best_step'] is None:
        return None
    best_state = ckpt.restore_best(state)
    test = evaluate(eval_step, best_state, eval_batches(
        splits.test, cfg=cfg_d, global_batch=cfg_t.eval_batch_size,
        global_size=splits.sizes['test'], sharding=parallel.batch_sharded(mesh)))
    record = {'kind': 'best', 'step': meta['best_step'], 'val_score': meta['best_score'],
              'stopped_early': meta['stopped_early'], 'test': test}
    log.write(record)
    log.print(f'best checkpoint: step {meta["best_step"]} (val {cfg_t.selection_metric} '
              f'{meta["best_score"]:.4f}) -> test accuracy {test["accuracy"]:.4f}'
              + (' [early stopped]' if meta['stopped_early'] else ''))
    return record
