"""Step-time cost of a LinR step relative to a cross-entropy train step.

Both are the real jitted data-parallel steps camjax runs: the classification
step of a refine run (`refine.make_cls_step`, CE, SGD momentum) and its LinR
step (`refine.make_linr_step`: a forward-backward pass on the mixed batch plus
one no-grad forward pass for P2), on the same model, the same fixed random
uint8 batch (batch-sharded on the mesh) and the same initial state. Each is
compiled and warmed up, then they are timed in interleaved rounds (a new
random order each round, --steps steps per variant, blocking on the result),
so background load hits both alike. LinR variants: linr (mixing), linrc (plus
the confidence mask) and linrnm (no partner).

Reported: median / min step time, the ratio of medians to CE (the verdict,
target <= 1.7x: one forward-backward plus one forward on B, since f(y) is
f(x) permuted), the ratio of minimums, the range of per-round paired ratios
and XLA's flop ratio (load-independent).

  python bench/linr_overhead.py                         # ResNet-20 32px b128 (CPU)
  python bench/linr_overhead.py --model resnet18_imagenet --size 224 --batch 256  # GPU
  python bench/linr_overhead.py --quick
"""

import argparse
import os
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from timing import compiled_runner  # noqa: E402

from camjax import objectives, parallel  # noqa: E402
from camjax.config.schema import base_config  # noqa: E402
from camjax.models import build_model  # noqa: E402
from camjax.training import refine  # noqa: E402
from camjax.training.state import init_state  # noqa: E402

TARGET = 1.7  # LinR step time / CE step time
NORM = {'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='resnet20')
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--num-classes', type=int, default=100)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--dtype', default='float32')
    p.add_argument('--quick', action='store_true', help='batch 32, 3 rounds x 1 step')
    args = p.parse_args()
    if args.quick:
        args.batch, args.rounds, args.steps = 32, 3, 1

    mesh = parallel.make_mesh()
    model = build_model(args.model, num_classes=args.num_classes, dtype=args.dtype)
    rng = np.random.default_rng(0)
    sharded = parallel.batch_sharded(mesh)
    images = jax.device_put(
        rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8), sharded)
    batch = {'image': images, 'label': jax.device_put(
        rng.integers(0, args.num_classes, (args.batch,)).astype(np.int32), sharded)}
    tx = optax.sgd(0.01, momentum=0.9)
    state = init_state(model, lambda p: {'cls': tx.init(p), 'linr': tx.init(p)},
                             seed=0, image_size=args.size, mesh=mesh)
    print(f'== {args.model} {args.size}x{args.size}, {args.num_classes} classes, batch '
          f'{args.batch}, {args.dtype}, {args.rounds} rounds x {args.steps} steps, '
          f'{jax.default_backend()} x{mesh.devices.size}', flush=True)

    objective = objectives.build_objective([dict(name='cross_entropy')])
    steps = {'ce': (refine.make_cls_step(model, objective, tx, mesh=mesh, **NORM), batch)}
    for variant in ('linr', 'linrc', 'linrnm'):
        cfg = ml_collections.ConfigDict(base_config().refine.to_dict())
        cfg.variant = variant
        steps[variant] = (refine.make_linr_step(model, tx, cfg, seed=0, mesh=mesh,
                                                multilabel=False, **NORM), batch)
    runners, flops = {}, {}
    for name, (step_fn, arg) in steps.items():
        t0 = time.perf_counter()
        runners[name], _, flops[name] = compiled_runner(step_fn, state, arg)
        print(f'   compiled {name:<7} in {time.perf_counter() - t0:5.1f} s: '
              f'{flops[name] / 1e9:8.2f} GFLOP/step', flush=True)

    times = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name in rng.permutation(list(runners)):
            times[name].append(runners[name](args.steps))

    ce = times['ce']
    print(f'   {"step":<7} {"median ms":>10} {"min ms":>9} | vs ce: {"median":>6} {"min":>6} '
          f'{"rounds":>14} {"flops":>6}  target')
    for name, ts in times.items():
        line = f'   {name:<7} {1e3 * statistics.median(ts):10.1f} {1e3 * min(ts):9.1f} |'
        if name != 'ce':
            ratio = statistics.median(ts) / statistics.median(ce)
            paired = [a / b for a, b in zip(ts, ce, strict=True)]
            line += (f'        {ratio:6.3f} {min(ts) / min(ce):6.3f} {min(paired):6.3f}..'
                     f'{max(paired):<6.3f} {flops[name] / flops["ce"]:6.3f}  <={TARGET} '
                     f'{"PASS" if ratio <= TARGET else "MISS"}')
        print(line, flush=True)


if __name__ == '__main__':
    main()
