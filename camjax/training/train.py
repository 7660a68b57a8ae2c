"""Training: the data-parallel train and eval steps, and the training loop
(its shared pieces are in camjax.training.loop, the model state in camjax.training.state).

Read top to bottom: steps -> loop. Steps are `jax.jit` over the
('data',) mesh with the state replicated and the batch sharded; XLA inserts
the cross-device reductions, so BatchNorm statistics and gradients are those of
the global batch, exactly as on one device.
"""

import jax
import jax.numpy as jnp
import optax

from camjax import objectives, parallel
from camjax.data import Splits, normalize_images
from camjax.evaluation import metrics as metrics_lib
from camjax.training import accumulate, mixup, nonfinite, optim
from camjax.training.interrupt import StopSignals
from camjax.training.loop import LoopState, RunParts, Window, due
from camjax.training.runlog import Throughput
from camjax.training.state import TrainState, forward, init_state


# =============================================================================
# Steps
# =============================================================================
def jit_step(step, mesh):
    """`step(state, batch) -> (state, metrics)` jitted over the mesh: state
    replicated and donated, batch sharded along 'data'."""
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(replicated, sharded),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def make_train_step(model, objective, tx, *, mean, std, mesh, pos_rate=None,
                    skip_nonfinite: bool = False, grad_accum_steps: int = 1,
                    mixup_alpha: float = 0.0, seed: int = 0):
    """Jitted `(state, batch) -> (state, metrics)`, the state donated, with
    the non-finite guard's indicators (`camjax.training.nonfinite`)."""
    step = train_step_fn(model, objective, tx, mean=mean, std=std, pos_rate=pos_rate,
                         grad_accum_steps=grad_accum_steps, mixup_alpha=mixup_alpha, seed=seed)
    return jit_step(nonfinite.guard_step(step, skip=skip_nonfinite), mesh)


def train_step_fn(model, objective, tx, *, mean, std, pos_rate=None, grad_accum_steps: int = 1,
                  mixup_alpha: float = 0.0, seed: int = 0):
    """The pure `(state, batch) -> (state, metrics)` of one `tx` step on
    `objective`, for composing into other steps (a refine run's classification
    phase). `pos_rate` (K,) is the training split's positive rate (multi-label
    only). `grad_accum_steps` > 1 computes the step's gradient over that many
    microbatches in turn (`camjax.training.accumulate`). `mixup_alpha` > 0
    trains on mixup batches drawn from (`seed`, step) (`camjax.training.mixup`);
    the reported accuracy is then lam-weighted over the two labels."""

    def loss_fn(params, batch_stats, batch):
        images = normalize_images(batch['image'], mean=mean, std=std)
        labels = batch['label']
        weights = jnp.ones(images.shape[0], jnp.float32)
        logits, features, batch_stats = forward(model, params, batch_stats, images, train=True)
        mix = (batch['mix_label'], batch['mix_lam']) if 'mix_lam' in batch else None
        inputs = objectives.objective_inputs(logits, features, labels, params, pos_rate, mix)
        loss, terms = objective(inputs, weights)
        correct = metrics_lib.example_accuracy(logits=logits, labels=labels)
        if mix is not None:
            lam = batch['mix_lam']
            correct = lam * correct + (1.0 - lam) * metrics_lib.example_accuracy(
                logits=logits, labels=batch['mix_label'])
        return loss, (batch_stats, {'loss': loss, 'accuracy': jnp.mean(correct),
                                    **{f'loss/{name}': value for name, value in terms.items()}})

    def train_step(state: TrainState, batch: dict):
        if mixup_alpha > 0:  # mixed as float pixels; the normalization is affine
            images, partner_labels, lam = mixup.mix(batch['image'].astype(jnp.float32),
                                                    batch['label'], alpha=mixup_alpha,
                                                    seed=seed, step=state.step)
            batch = {**batch, 'image': images, 'mix_label': partner_labels, 'mix_lam': lam}
        (_, (batch_stats, step_metrics)), grads = accumulate.value_and_grad(
            loss_fn, state.params, state.batch_stats, batch, steps=grad_accum_steps)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                               opt_state=opt_state)
        return new_state, step_metrics

    return train_step


def build_training(config, model, objective, *, plan, mesh, pos_rate=None):
    """(schedule, jitted train step, initial state) of `config`: the learning
    rate schedule over `plan`, the optimizer, `make_train_step` and a fresh
    replicated state from `config.seed`. The training loop runs exactly this;
    benchmarks (bench/cli_step.py) build it the same way."""
    t, d = config.train, config.dataset
    schedule = optim.make_schedule(config.optimizer, total_steps=plan.total_steps,
                                   steps_per_epoch=plan.steps_per_epoch, batch_size=t.batch_size)
    tx = optim.make_optimizer(config.optimizer, schedule)
    step = make_train_step(model, objective, tx, mean=tuple(d.mean), std=tuple(d.std), mesh=mesh,
                           pos_rate=pos_rate, skip_nonfinite=t.skip_nonfinite_updates,
                           grad_accum_steps=t.grad_accum_steps, mixup_alpha=t.mixup_alpha,
                           seed=config.seed)
    initial = init_state(model, tx.init, seed=config.seed, image_size=d.image_size, mesh=mesh)
    return schedule, step, initial


# =============================================================================
# Loop
# =============================================================================
def train_and_evaluate(config, workdir: str, splits: Splits, *,
                       stop_after_steps: int | None = None):
    """Train `config` in `workdir`, resuming from its newest checkpoint.

    `stop_after_steps` ends this invocation after that many steps without any
    extra save, as a kill would (used to test resumption).
    Returns (final TrainState, last eval or best-checkpoint record, or None).
    """
    parts = RunParts(config, workdir, splits)
    try:
        plan = parts.plan
        schedule, train_step, initial = build_training(config, parts.model, parts.objective,
                                                       plan=plan, mesh=parts.mesh,
                                                       pos_rate=parts.pos_rate)
        state, loop = parts.resume(initial, LoopState(), new_classifier_ok=True)
        done = loop.stopped_early or loop.step >= plan.total_steps
        if done:
            parts.log.print(f'run is already complete at step {loop.step}')
        log_every = config.train.log_every
        speed, window, record, steps_this_run = Throughput(loop.step), Window(loop), None, 0
        with StopSignals() as stops:
            while not done:
                state, step_metrics = train_step(state, parts.next_batch(window))
                loop.step += 1
                steps_this_run += 1
                window.add(step_metrics)
                last = loop.step == plan.total_steps
                log = log_every and (due(loop.step, log_every) or last)
                evaluate = due(loop.step, plan.eval_every) or last
                stop = stops.requested(loop.step)
                save = last or due(loop.step, plan.checkpoint_every)
                if log or evaluate or save or stop:
                    parts.check_finite(window, loop)
                if log:
                    parts.log_window(window, loop, speed, lr=float(schedule(loop.step - 1)))
                if evaluate:
                    record = parts.evaluate_and_select(loop, state)
                done = loop.stopped_early or loop.step >= plan.total_steps
                parts.end_step(state, loop, window, stop=None if done else stop,
                               save=done or save)
                if stop_after_steps is not None and steps_this_run >= stop_after_steps:
                    return state, record
        return state, parts.report_best(state, loop) or record
    finally:
        parts.close()  # never leave a half-written save behind, even on errors
