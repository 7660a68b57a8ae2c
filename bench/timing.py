"""The timing runner the step benchmarks share."""

import time

import jax
import jax.numpy as jnp


def compiled_runner(step_fn, state, arg):
    """(`run(n) -> seconds per step`, compile seconds, XLA flops per step) of
    a jitted `step_fn(state, arg) -> (state, metrics)`, compiled and warmed
    up. It threads its own copy of `state`, since the step donates it."""
    box = [jax.tree.map(jnp.copy, state)]
    t0 = time.perf_counter()
    step = step_fn.lower(box[0], arg).compile()
    compile_s = time.perf_counter() - t0
    cost = step.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost or {}).get('flops', float('nan'))

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            box[0], metrics = step(box[0], arg)
        jax.block_until_ready((box[0], metrics))
        return (time.perf_counter() - t0) / n

    run(2)  # warm-up
    return run, compile_s, flops
