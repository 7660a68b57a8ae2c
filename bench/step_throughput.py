"""Train-step throughput: camjax (conv_impl 'xla' and 'fast') vs PyTorch eager.

Times one SGD step (momentum 0.9, lr 0.1, softmax cross-entropy, BatchNorm in
train mode) on random data, for every camjax conv implementation and -- for the
CIFAR ResNets on CPU -- for the same network in PyTorch eager, in one run.
Implementations are timed in interleaved rounds so that background load hits
them alike; each reports the median over rounds of images/s.

  python bench/step_throughput.py                      # ResNet-20, batch 128, 32x32
  python bench/step_throughput.py --steps 5 --repeats 3
  python bench/step_throughput.py --gpu-resnet50       # ResNet-50 224x224 bf16 batch 256
  python bench/step_throughput.py --model resnet50_imagenet --size 64 --batch 4

PyTorch (`pip install torch`, extra `bench`) is optional; without it the
reference is reported as skipped.
"""

import argparse
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from camjax.models import build_model  # noqa: E402


def jax_stepper(name, impl, args):
    model = build_model(name, num_classes=args.num_classes, conv_impl=impl, dtype=args.dtype)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, args.size, args.size, 3), np.float32))
    y = jnp.asarray(rng.integers(0, args.num_classes, args.batch))
    variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
    tx = optax.sgd(0.1, momentum=0.9)
    state = (variables['params'], variables['batch_stats'], tx.init(variables['params']))

    def step(state, x, y):
        params, batch_stats, opt_state = state

        def loss_fn(p):
            (logits, _), new = model.apply({'params': p, 'batch_stats': batch_stats}, x,
                                           train=True, mutable=['batch_stats'])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, new['batch_stats']

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    t0 = time.perf_counter()
    step = jax.jit(step, donate_argnums=0).lower(state, x, y).compile()
    compile_s = time.perf_counter() - t0
    box = [state]

    def run(n):
        for _ in range(n):
            box[0], loss = step(box[0], x, y)
        jax.block_until_ready(loss)

    return run, compile_s


def torch_stepper(name, args):
    """The same CIFAR ResNet in PyTorch eager; None (with a reason) if not possible."""
    try:
        import torch
        import torch.nn as tnn
        import torch.nn.functional as F
    except ImportError:
        return None, 'torch is not importable (pip install torch==2.13.0)'
    m = re.fullmatch(r'resnet(\d+)', name)
    if not m or (int(m.group(1)) - 2) % 6:
        return None, f'no PyTorch reference for model {name!r} (only CIFAR resnet6n+2)'
    if jax.default_backend() != 'cpu':
        return None, f'PyTorch reference runs on CPU only; camjax runs on {jax.default_backend()}'
    torch.set_num_threads(os.cpu_count())

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = tnn.BatchNorm2d(cout)  # momentum 0.1 == flax momentum 0.9
            self.c2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = tnn.BatchNorm2d(cout)
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
            if self.stride != 1 or self.pad:  # option A: subsample + zero-pad channels
                x = F.pad(x[:, :, ::self.stride, ::self.stride],
                          (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return F.relu(x + y)

    class CifarResNet(tnn.Module):
        def __init__(self, depth, num_classes, width=16):
            super().__init__()
            n = (depth - 2) // 6
            self.stem = tnn.Sequential(tnn.Conv2d(3, width, 3, 1, 1, bias=False),
                                       tnn.BatchNorm2d(width), tnn.ReLU())
            blocks, cin = [], width
            for stage in range(3):
                for b in range(n):
                    cout = width * 2**stage
                    blocks.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
                    cin = cout
            self.blocks = tnn.Sequential(*blocks)
            self.fc = tnn.Linear(cin, num_classes)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x)).mean((2, 3)))

    torch.manual_seed(0)
    model = CifarResNet(int(m.group(1)), args.num_classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, args.num_classes, (args.batch,))
    bf16 = args.dtype == 'bfloat16'

    def run(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()

    return run, f'torch {torch.__version__}, {torch.get_num_threads()} threads'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='resnet20')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--size', type=int, default=32, help='input height = width')
    p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
    p.add_argument('--num-classes', type=int, default=10)
    p.add_argument('--impls', default='xla,fast', help='camjax conv_impls, comma-separated')
    p.add_argument('--steps', type=int, default=10, help='steps per timed round')
    p.add_argument('--repeats', type=int, default=5, help='timed rounds (median is reported)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps after compiling')
    p.add_argument('--no-torch', action='store_true', help='skip the PyTorch reference')
    p.add_argument('--gpu-resnet50', action='store_true',
                   help='shorthand: --model resnet50_imagenet --size 224 --dtype bfloat16 '
                        '--batch 256 --num-classes 1000')
    args = p.parse_args(argv)
    if args.gpu_resnet50:
        args.model, args.size, args.dtype, args.batch = 'resnet50_imagenet', 224, 'bfloat16', 256
        args.num_classes = 1000

    dev = jax.devices()[0]
    print(f'{args.model} {args.size}x{args.size} {args.dtype} batch {args.batch}; '
          f'jax {jax.__version__} on {dev.platform} ({dev.device_kind}), {os.cpu_count()} CPUs; '
          f'{args.repeats} rounds x {args.steps} steps')
    runners = {}
    for impl in args.impls.split(','):
        runners[impl], compile_s = jax_stepper(args.model, impl, args)
        print(f'  compiled camjax[{impl}] in {compile_s:.1f} s')
    ref = None
    if args.no_torch:
        print('  PyTorch reference skipped: --no-torch')
    else:
        run, info = torch_stepper(args.model, args)
        if run is None:
            print(f'  PyTorch reference skipped: {info}')
        else:
            ref = 'pytorch'
            runners[ref] = run
            print(f'  PyTorch reference: eager, {info}')

    for run in runners.values():
        run(args.warmup)
    times = {k: [] for k in runners}
    for _ in range(args.repeats):  # interleaved rounds
        for k, run in runners.items():
            t0 = time.perf_counter()
            run(args.steps)
            times[k].append(time.perf_counter() - t0)
    ips = {k: args.batch * args.steps / statistics.median(v) for k, v in times.items()}

    print(f'\n{"impl":10s} {"img/s":>9s} {"min-max img/s":>17s} {"vs PyTorch":>11s}')
    for k, v in times.items():
        lo, hi = args.batch * args.steps / max(v), args.batch * args.steps / min(v)
        ratio = f'{ips[k] / ips[ref]:.2f}x' if ref else '-'
        print(f'{k:10s} {ips[k]:9.1f} {f"{lo:.1f}-{hi:.1f}":>17s} {ratio:>11s}')
    if 'xla' in ips and 'fast' in ips:
        print(f'\nfast / xla: {ips["fast"] / ips["xla"]:.2f}x')


if __name__ == '__main__':
    main()
