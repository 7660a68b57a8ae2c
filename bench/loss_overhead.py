"""Step-time overhead of the CAM regularizers relative to cross-entropy alone.

For each case (model, image size, classes, HNC k, batch) this builds the
objectives CE only, CE + hnc_kd, CE + hnc_mse and CE + L1 classifier penalty
with `objectives.build_objective`, and for each the real jitted data-parallel
train step (`train.make_train_step`, SGD with momentum, state from
`camjax.training.state.init_state`, the donated state threaded through) on one fixed random
uint8 batch placed batch-sharded on the mesh. All variants start from one
initial state. Unless --quick, a second, separately compiled CE-only step
('ce_again') is an A/A control: its ratio to 'ce' shows what the machine's
noise alone produces. (Its HLO is identical, so it cannot show differences
that come only from how XLA compiles different programs; on XLA:CPU those can
exceed the targets in either direction. XLA's flop ratio is the noise-free
check that a term adds little work.)

Every variant is compiled and warmed up first. Then they are timed in
interleaved rounds (in a new random order each round), each round running
--steps steps per variant and blocking on the result, so background load hits
all variants alike. Reported per variant: median / min / max step time over
rounds; vs CE: the ratio of medians (which the verdict uses), the ratio of
minimums, the range of the per-round paired ratios and the ratio of XLA's flop
counts (from the compiled step's cost analysis); then the target (HNC <= 1.05,
penalty <= 1.01 x CE) and PASS/MISS.

  python bench/loss_overhead.py             # ResNet-56 32px b64; ResNet-50 224px b8
  python bench/loss_overhead.py --quick     # smoke run, a few minutes, mostly compiling
  python bench/loss_overhead.py --cases resnet56 --batch-resnet56 128 --rounds 15
"""

import argparse
import os
import statistics
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from timing import compiled_runner  # noqa: E402

from camjax import objectives, parallel  # noqa: E402
from camjax.models import build_model  # noqa: E402
from camjax.training import train  # noqa: E402
from camjax.training.state import init_state  # noqa: E402

CE = dict(name='cross_entropy')
TARGETS = {'hnc_kd': 1.05, 'hnc_mse': 1.05, 'l1': 1.01}  # max step time / CE-only step time


def variants(k, control: bool):
    out = {'ce': [CE],
           'hnc_kd': [CE, dict(name='hnc_kd', weight=1.0, k=k)],
           'hnc_mse': [CE, dict(name='hnc_mse', weight=1.0, k=k)],
           'l1': [CE, dict(name='classifier_penalty', weight=1e-4, form='l1')]}
    return {**out, 'ce_again': [CE]} if control else out


def make_runner(model, tx, terms, state, batch, *, mesh):
    """(`run(n) -> seconds per step`, compile seconds, XLA flops per step) for
    one objective, compiled and warmed up. Trains its own copy of `state`."""
    step = train.make_train_step(model, objectives.build_objective(terms), tx,
                                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), mesh=mesh)
    return compiled_runner(step, state, batch)


def bench_case(name, *, size, num_classes, k, batch_size, args):
    mesh = parallel.make_mesh()
    model = build_model(name, num_classes=num_classes, conv_impl=args.conv_impl)
    rng = np.random.default_rng(0)
    batch = jax.device_put({
        'image': rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
        'label': rng.integers(0, num_classes, (batch_size,)).astype(np.int32)},
        parallel.batch_sharded(mesh))
    print(f'\n== {name} {size}x{size}, {num_classes} classes, k={k}, batch {batch_size}, '
          f'{args.rounds} rounds x {args.steps} steps, {jax.default_backend()} '
          f'x{mesh.devices.size}, conv_impl {args.conv_impl}', flush=True)
    tx = optax.sgd(0.1, momentum=0.9)
    state = init_state(model, tx.init, seed=0, image_size=size, mesh=mesh)
    runners, flops = {}, {}
    for v, terms in variants(k, control=not args.quick).items():
        runners[v], compile_s, flops[v] = make_runner(model, tx, terms, state, batch, mesh=mesh)
        print(f'   compiled {v:<8} in {compile_s:5.1f} s: {flops[v] / 1e9:8.2f} GFLOP/step',
              flush=True)
    times = {v: [] for v in runners}
    for _ in range(args.rounds):
        for v in rng.permutation(list(runners)):  # a new order (and neighbours) each round
            times[v].append(runners[v](args.steps))

    ce = times['ce']
    print(f'   {"variant":<8} {"median ms":>10} {"min ms":>9} {"max ms":>9} | vs ce: '
          f'{"median":>6} {"min":>6} {"rounds":>14} {"flops":>7}  target')
    for v, ts in times.items():
        line = f'   {v:<8} {1e3 * statistics.median(ts):10.1f} {1e3 * min(ts):9.1f} ' \
               f'{1e3 * max(ts):9.1f} |'
        if v != 'ce':
            ratio = statistics.median(ts) / statistics.median(ce)
            paired = [a / b for a, b in zip(ts, ce, strict=True)]
            target = TARGETS.get(v)
            verdict = (f'<={target:.2f}  {"PASS" if ratio <= target else "MISS"}' if target
                       else '  (A/A control: noise)')
            line += (f'        {ratio:6.3f} {min(ts) / min(ce):6.3f} {min(paired):6.3f}..'
                     f'{max(paired):<6.3f} {flops[v] / flops["ce"]:7.4f} {verdict:>7}')
        print(line, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--cases', nargs='+', default=['resnet56', 'resnet50'],
                   choices=['resnet56', 'resnet50'])
    p.add_argument('--batch-resnet56', type=int, default=64)
    p.add_argument('--batch-resnet50', type=int, default=8)
    p.add_argument('--size-resnet50', type=int, default=224)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--steps', type=int, default=3, help='steps per variant per round')
    p.add_argument('--conv-impl', default='xla')
    p.add_argument('--quick', action='store_true',
                   help='smoke run: batches 16 / 2, ResNet-50 at 112px, 3 rounds x 1 step, '
                        'no A/A control')
    args = p.parse_args()
    if args.quick:
        args.batch_resnet56, args.batch_resnet50, args.size_resnet50 = 16, 2, 112
        args.rounds, args.steps = 3, 1
    cases = {'resnet56': dict(name='resnet56', size=32, num_classes=100, k=10,
                              batch_size=args.batch_resnet56),
             'resnet50': dict(name='resnet50_imagenet', size=args.size_resnet50,
                              num_classes=1000, k=100, batch_size=args.batch_resnet50)}
    print('targets: step time of CE + hnc_kd / hnc_mse <= 1.05 x CE only; '
          'CE + L1 classifier penalty <= 1.01 x CE only (verdict: ratio of medians)')
    for case in args.cases:
        bench_case(**cases[case], args=args)


if __name__ == '__main__':
    main()
