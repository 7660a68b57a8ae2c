"""Data-parallel scaling over forced CPU devices: agreement and throughput.

For each device count N (default 1, 2, 4, 8) one subprocess starts with
XLA_FLAGS=--xla_force_host_platform_device_count=N (the flag must be set
before JAX starts) and builds camjax's real training step, the one the CLI
runs (`bench/cli_step.py`: `make_train_step` jitted over the ('data',) mesh of
all N devices, state replicated and donated, batch sharded), with the same
config, seed and therefore the same initial state for every N. Each runs
--check-steps steps on the same global batches (fixed seeds, placed on the
mesh) and saves its parameters; the parent checks that the initial
parameters are identical and that the losses and the parameters after those
steps agree with N=1 within --tol (absolute; exit status 1 when they do not).

What the tolerance can resolve: a sharded step sums the gradients and the
BatchNorm statistics in another order than one device does, so float32
rounding alone moves the parameters. The N=1 process measures that floor
directly -- the same steps on the same batches with the examples in reverse
order, mathematically the same step -- and prints it next to the largest
parameter update, which an error in the reduction (a sum instead of a mean,
per-device BatchNorm statistics, one shard's gradient) would show at. The
default learning rate (1e-3, ResNet-20, 3 steps) keeps the floor near 1e-6
and the update near 5e-3, so --tol 1e-5 sits between them; at lr 0.1 the
rounding of the first step (~2e-5) is amplified to ~2e-3 by step 3, in the
reversed-batch control as much as for N > 1.

Then the throughput: every process has compiled and warmed up, and the
parent times them in interleaved rounds (a new random order each round, one
process running at a time, --steps steps on device-resident batches, blocking
only at the end of the round), so background load hits every N alike;
reported per N: the median / min / max images/s over rounds and the ratio of
medians to N=1. Forced host devices share the same physical cores, so more
of them is not expected to be faster: this measures the cost of the sharded
step (collectives, per-device dispatch), it does not claim a speed-up.

  python bench/device_scaling.py                    # ResNet-20, 32px, batch 128, N = 1,2,4,8
  python bench/device_scaling.py --devices 1,2 --model resnet8 --width 4 --size 16 \\
      --batch 16 --rounds 2 --steps 1               # smallest, as the test runs it
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MARK = '@@ '  # prefix of the child's protocol lines on its stdout


# =============================================================================
# Child: one device count
# =============================================================================
def child(args):
    import jax

    sys.path.insert(0, HERE)
    import cli_step

    fields = {'width': args.width} if args.width else {}
    config = cli_step.bench_config(model=args.model, image_size=args.size,
                                   batch_size=args.batch, dtype=args.dtype, **fields)
    config.optimizer.learning_rate = args.lr
    cli = cli_step.build(config, num_classes=args.num_classes)
    n = cli.mesh.devices.size
    assert n == args.n, f'expected {args.n} devices, got {n}'
    batches = cli.synthetic_batches(max(args.check_steps, args.rotate), seed=1)

    def flat(tree):
        return {jax.tree_util.keystr(path): np.asarray(leaf)
                for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}

    arrays = {f'init{k}': v for k, v in flat(cli.state.params).items()}
    compile_s = cli_step.compile_step(cli, batches[0])
    stepper = cli_step.Stepper(cli, batches[:args.check_steps])
    losses = []
    for _ in range(args.check_steps):  # one step at a time: the loss of each
        stepper.run(1)
        losses.append(float(stepper.metrics['loss']))
    arrays.update({f'params{k}': v for k, v in flat(stepper.state.params).items()})
    arrays.update({f'batch_stats{k}': v for k, v in flat(stepper.state.batch_stats).items()})
    control = []
    if n == 1:  # the rounding floor: the same steps on the examples reversed in each batch
        reversed_batches = [jax.tree.map(lambda x: x[::-1], b) for b in batches]
        shuffled = cli_step.Stepper(cli, reversed_batches[:args.check_steps])
        for _ in range(args.check_steps):
            shuffled.run(1)
            control.append(float(shuffled.metrics['loss']))
        arrays.update({f'control{k}': v for k, v in flat(shuffled.state.params).items()})
    np.savez(args.out, **arrays)

    stepper = cli_step.Stepper(cli, batches[:args.rotate], state=stepper.state)
    stepper.run(args.warmup)

    def say(**msg):
        print(MARK + json.dumps(msg), flush=True)

    say(ready=True, devices=n, device=cli_step.device_label(), losses=losses, control=control,
        compile_s=compile_s, sharding=str(batches[0]['image'].sharding.spec),
        shards=len(batches[0]['image'].addressable_shards))
    for line in sys.stdin:
        command = line.split()
        if command[0] == 'run':
            say(seconds=stepper.run(int(command[1])))
        else:
            return


# =============================================================================
# Parent
# =============================================================================
class Child:
    def __init__(self, n, args, workdir):
        self.n, self.out = n, os.path.join(workdir, f'{n}.npz')
        self.stderr = tempfile.TemporaryFile('w+')
        flags = os.environ.get('XLA_FLAGS', '')
        env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
               'XLA_FLAGS': f'{flags} --xla_force_host_platform_device_count={n}'.strip()}
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), '--child', '--n', str(n),
             '--out', self.out, *forwarded(args)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, bufsize=1)

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        self.proc.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-3000:]
        raise SystemExit(f'device_scaling: the N={self.n} process exited with status '
                         f'{self.proc.returncode}:\n{tail}')

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + '\n')
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('quit\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.stderr.close()


SHARED = ('model', 'width', 'size', 'batch', 'dtype', 'num_classes', 'lr', 'check_steps',
          'warmup', 'rotate')


def forwarded(args) -> list[str]:
    return [f'--{name.replace("_", "-")}={getattr(args, name)}' for name in SHARED]


def max_abs_diff(a, b, prefix: str, other: str | None = None) -> float:
    """max |a[prefix...] - b[other...]| over the saved leaves (other = prefix)."""
    other = other or prefix
    keys = sorted(k[len(prefix):] for k in a.files if k.startswith(prefix))
    assert keys == sorted(k[len(other):] for k in b.files if k.startswith(other))
    return max(float(np.max(np.abs(a[prefix + k].astype(np.float64) - b[other + k])))
               for k in keys)


def parent(args):
    counts = [int(n) for n in args.devices.split(',')]
    if counts[0] != 1:
        counts = [1, *[n for n in counts if n != 1]]  # N=1 is the reference
    for n in counts:
        if args.batch % n:
            raise SystemExit(f'device_scaling: --batch {args.batch} is not divisible by {n}')
    print(f'device scaling: camjax train step (CLI make_train_step, donated state, '
          f'batch sharded on ("data",)), {args.model}'
          f'{f" width {args.width}" if args.width else ""} {args.size}x{args.size} '
          f'{args.dtype}, {args.num_classes} classes, global batch {args.batch}, '
          f'SGD lr {args.lr}; forced CPU devices N = {counts} on {os.cpu_count()} CPU cores',
          flush=True)
    with tempfile.TemporaryDirectory(prefix='camjax-scaling-') as workdir:
        children = {n: Child(n, args, workdir) for n in counts}
        try:
            ready = {n: c.read() for n, c in children.items()}
            for n in counts:
                r = ready[n]
                print(f'  N={n}: {r["device"]}, batch sharding {r["sharding"]} over '
                      f'{r["shards"]} shard(s), compiled in {r["compile_s"]:.1f} s', flush=True)
            ok = report_agreement(counts, ready, {n: c.out for n, c in children.items()}, args)
            seconds = {n: [] for n in counts}
            rng = random.Random(0)
            for _ in range(args.rounds):
                order = list(counts)
                rng.shuffle(order)
                for n in order:
                    seconds[n].append(children[n].ask(f'run {args.steps}')['seconds'])
        finally:
            for c in children.values():
                c.close()
    report_throughput(counts, seconds, args, ready[1]['device'])
    if not ok:
        print(f'device_scaling: FAIL: N>1 does not agree with N=1 within {args.tol:g}')
        return 1
    return 0


def report_agreement(counts, ready, outs, args) -> bool:
    print(f'\nagreement after {args.check_steps} steps on the same global batches '
          f'(tolerance {args.tol:g} on losses and params):')
    ref_losses = ready[1]['losses']
    ref = np.load(outs[1])
    ok = True
    for n in counts:
        losses = ready[n]['losses']
        shown = ' '.join(f'{x:.6f}' for x in losses)
        if n == 1:
            print(f'  N={n}: losses {shown} (reference)')
            update = max_abs_diff(ref, ref, 'params', other='init')
            loss = max(abs(a - b) for a, b in zip(ready[1]['control'], ref_losses, strict=True))
            params = max_abs_diff(ref, ref, 'control', other='params')
            print(f'  N=1, batches reversed (same sums in another order): max|loss diff| '
                  f'{loss:.3e}; max|param diff| {params:.3e} (the rounding floor); '
                  f'max|param update| {update:.3e}')
            if max(loss, params) > args.tol:
                print(f'  note: float32 rounding alone exceeds --tol {args.tol:g} here; '
                      'lower --lr or --check-steps for a check that can pass')
            continue
        got = np.load(outs[n])
        init = max_abs_diff(got, ref, 'init')
        params = max_abs_diff(got, ref, 'params')
        stats = max_abs_diff(got, ref, 'batch_stats')
        loss = max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True))
        good = init == 0.0 and params <= args.tol and loss <= args.tol
        ok &= good
        print(f'  N={n}: losses {shown}; max|loss diff| {loss:.3e}; max|param diff| '
              f'{params:.3e} (initial {init:.1e}; BatchNorm stats {stats:.3e}) '
              f'{"OK" if good else "FAIL"}', flush=True)
    return ok


def report_throughput(counts, seconds, args, device):
    images = args.batch * args.steps
    print(f'\nthroughput on {device.split(" (")[0]}: {args.rounds} interleaved rounds x '
          f'{args.steps} steps after {args.warmup} warm-up steps, compile excluded '
          f'(forced devices share the physical cores):')
    print(f'  {"N":>3} {"img/s (median)":>15} {"min-max img/s":>17} {"vs N=1":>7}')
    rates = {n: [images / s for s in seconds[n]] for n in counts}
    base = statistics.median(rates[1])
    for n in counts:
        med = statistics.median(rates[n])
        print(f'  {n:>3} {med:15.1f} {f"{min(rates[n]):.1f}-{max(rates[n]):.1f}":>17} '
              f'{med / base:6.2f}x')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--devices', default='1,2,4,8', help='device counts, comma-separated')
    p.add_argument('--model', default='resnet20')
    p.add_argument('--width', type=int, default=0, help='model width (0: the model default)')
    p.add_argument('--size', type=int, default=32, help='image height = width')
    p.add_argument('--batch', type=int, default=128, help='global batch')
    p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
    p.add_argument('--num-classes', type=int, default=10)
    p.add_argument('--lr', type=float, default=0.001)
    p.add_argument('--check-steps', type=int, default=3, help='steps compared against N=1')
    p.add_argument('--tol', type=float, default=1e-5,
                   help='max |difference| of losses and params allowed against N=1')
    p.add_argument('--steps', type=int, default=5, help='steps per timed round')
    p.add_argument('--rounds', type=int, default=7, help='timed rounds per N (median reported)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps before timing')
    p.add_argument('--rotate', type=int, default=3, help='device-resident batches cycled')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--n', type=int, help=argparse.SUPPRESS)
    p.add_argument('--out', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    return parent(args)


if __name__ == '__main__':
    sys.exit(main())
