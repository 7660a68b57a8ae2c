"""Gradient accumulation (train.grad_accum_steps): one optimizer update from
a global batch that is processed as N microbatches, one after another, so
that only a microbatch's activations are in memory at once.

The update is that of one step on the whole batch: every camjax loss term is
a mean over examples (or depends on the parameters only), so the mean of N
equal microbatches' losses, and of their gradients, is the whole batch's.
BatchNorm is the exception: each microbatch is normalized by its own
statistics (as a "ghost batch" of B/N examples), and the running averages
take N momentum updates per step, one per microbatch in order.

Microbatch j holds the examples j, j + N, j + 2N, ... of the batch, so each
device's shard of the batch (sharded along its first axis) contributes to
every microbatch equally and no example moves between devices.
"""

import jax
import jax.numpy as jnp


def microbatches(batch, steps: int):
    """(B, ...) leaves -> (steps, B // steps, ...), microbatch j = examples
    j, j + steps, ...; B must be divisible by `steps`."""
    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // steps, steps, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def value_and_grad(loss_fn, params, batch_stats, batch, *, steps: int):
    """`loss_fn(params, batch_stats, batch) -> (loss, (batch_stats, metrics))`
    over `batch` in `steps` microbatches: returns ((mean loss, (batch_stats
    after the last microbatch, mean metrics)), mean gradients), the shape
    of `jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, batch)`.
    `steps=1` is exactly that call."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if steps == 1:
        return grad_fn(params, batch_stats, batch)

    def one(carry, micro):
        batch_stats, sums = carry
        (loss, (batch_stats, metrics)), grads = grad_fn(params, batch_stats, micro)
        sums = jax.tree.map(jnp.add, sums, (loss, metrics, grads))
        return (batch_stats, sums), None

    parts = microbatches(batch, steps)
    first = jax.tree.map(lambda x: x[0], parts)
    shapes = jax.eval_shape(grad_fn, params, batch_stats, first)
    (loss0, (_, metrics0)), grads0 = shapes
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss0, metrics0, grads0))
    (batch_stats, sums), _ = jax.lax.scan(one, (batch_stats, zeros), parts)
    loss, metrics, grads = jax.tree.map(lambda x: x / steps, sums)
    return (loss, (batch_stats, metrics)), grads
