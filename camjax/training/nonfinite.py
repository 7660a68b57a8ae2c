"""Non-finite losses and updates, caught without a host sync per step.

`guard_step` wraps a pure step `(state, batch) -> (state, metrics)`: inside
the same jitted computation it tests the step's loss terms and the updated
state (params, BatchNorm statistics, optimizer state; a non-finite gradient
always reaches them) and adds indicators to the step metrics:
  nonfinite            1.0 when anything was non-finite
  nonfinite/<metric>   1.0 when that loss metric ('loss', 'loss/<term>') was
  nonfinite/update     1.0 when the updated state was
The step's own metrics are zeroed on such a step, so the window's means
average the good steps only. With `skip=True` the update is dropped (the
state is the old one, only `step` advances, so the data order is kept).

The loops sum the indicators in their log window and look at them only at
log, eval and checkpoint boundaries (`Window.nonfinite_counts`): without
skipping, the run stops there, before anything non-finite is evaluated,
selected or saved, so the last good checkpoint stays the newest.
"""

import jax
import jax.numpy as jnp

from camjax.errors import CamjaxError

FLAG = 'nonfinite'


class NonFiniteError(CamjaxError):
    """The run produced a non-finite loss or update and stopped."""


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def guard_step(step_fn, *, skip: bool):
    """`step_fn` with non-finite indicators in its metrics (see the module doc)."""

    def guarded(state, batch):
        new_state, metrics = step_fn(state, batch)
        losses_ok = {k: jnp.isfinite(v) for k, v in metrics.items()
                     if k == 'loss' or k.startswith('loss/')}
        update_ok = _all_finite((new_state.params, new_state.batch_stats, new_state.opt_state))
        ok = jnp.all(jnp.stack([update_ok, *losses_ok.values()]))
        if skip:
            kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
            new_state = kept.replace(step=new_state.step)
        flags = {f'{FLAG}/{k}': (~v).astype(jnp.float32) for k, v in losses_ok.items()}
        flags[f'{FLAG}/update'] = (~update_ok).astype(jnp.float32)
        flags[FLAG] = (~ok).astype(jnp.float32)
        return new_state, {**{k: jnp.where(ok, v, 0.0) for k, v in metrics.items()}, **flags}

    return guarded


def split_flags(sums: dict) -> tuple[dict, dict]:
    """(metric sums, non-finite indicator sums) of a window's summed metrics."""
    flags = {k: v for k, v in sums.items() if k == FLAG or k.startswith(FLAG + '/')}
    return {k: v for k, v in sums.items() if k not in flags}, flags


def failure_message(flags: dict, *, first_step: int, last_step: int,
                    last_checkpoint: int | None) -> str:
    """One line naming the window of steps and what went non-finite in it."""
    bad_losses = [k.removeprefix(f'{FLAG}/') for k, v in flags.items()
                  if k.startswith(f'{FLAG}/loss') and v > 0]
    named = [k for k in bad_losses if k != 'loss'] or bad_losses  # the terms, if they are
    what = ', '.join(named) if named else 'update (gradients; the loss was finite)'
    kept = ('no checkpoint was saved' if last_checkpoint is None
            else f'the newest checkpoint, step {last_checkpoint}, is from before it')
    return (f'non-finite {what} in steps {first_step}-{last_step} '
            f'({int(flags[FLAG])} bad step(s)); stopped without saving, and {kept}; '
            'lower the learning rate, or set train.skip_nonfinite_updates=True to skip '
            'such steps')
