"""oneDNN conv (camjax.models.onednn_conv) vs lax ('xla'), FastConv ('fast')
and PyTorch eager, per conv and per train step.

  python bench/onednn_conv.py convs      # the 19 convs of a CIFAR ResNet-20, batch 128
  python bench/step_throughput.py --impls fast,onednn      # the train step

`convs`: forward, input gradient and weight gradient of each distinct conv
shape, each a separate jitted function (PyTorch: F.conv2d and
aten.convolution_backward on NCHW tensors, as in PyTorch's own step), timed
back to back in interleaved rounds (median per call over rounds), then
summed over the 19 convs of a step.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from camjax.models import onednn_conv as oc  # noqa: E402
from camjax.models.fast_conv import _conv, default_chunk, fast_conv  # noqa: E402

# (H=W, Cin, Cout, stride, count) of ResNet-20's convs at 32 px (3x3, pad 1)
RESNET20 = [(32, 3, 16, 1, 1), (32, 16, 16, 1, 6), (32, 16, 32, 2, 1), (16, 32, 32, 1, 5),
            (16, 32, 64, 2, 1), (8, 64, 64, 1, 5)]
PADS = ((1, 1), (1, 1))


def jax_fns(impl, x, k, strides):
    def f(x, k):
        if impl.startswith('onednn'):  # 'onednn:N': N batch slices (CAMJAX_ONEDNN_PIECES)
            old = os.environ.get('CAMJAX_ONEDNN_PIECES')
            if ':' in impl:
                os.environ['CAMJAX_ONEDNN_PIECES'] = impl.split(':')[1]
            try:
                return oc.onednn_conv(x, k, strides, PADS)
            finally:
                if old is None:
                    os.environ.pop('CAMJAX_ONEDNN_PIECES', None)
                else:
                    os.environ['CAMJAX_ONEDNN_PIECES'] = old
        if impl == 'fast':
            return fast_conv(x, k, strides, PADS, default_chunk(k.shape[-1]))
        return _conv(x, k, strides, PADS)
    y = f(x, k)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape, np.float32))
    fwd = jax.jit(f)
    dx = jax.jit(lambda x, k, g: jax.vjp(lambda x_: f(x_, k), x)[1](g)[0])
    dw = jax.jit(lambda x, k, g: jax.vjp(lambda k_: f(x, k_), k)[1](g)[0])
    return {'fwd': lambda: fwd(x, k).block_until_ready(),
            'dx': lambda: dx(x, k, g).block_until_ready(),
            'dw': lambda: dw(x, k, g).block_until_ready()}


def torch_fns(x, k, strides):
    import torch
    import torch.nn.functional as F
    xt = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
    kt = torch.from_numpy(np.asarray(k)).permute(3, 2, 0, 1).contiguous()
    y = F.conv2d(xt, kt, stride=strides, padding=1)
    g = torch.randn(y.shape)
    bw = torch.ops.aten.convolution_backward
    args = (g, xt, kt, None, list(strides), [1, 1], [1, 1], False, [0, 0], 1)
    with torch.no_grad():
        return {'fwd': lambda: F.conv2d(xt, kt, stride=strides, padding=1),
                'dx': lambda: bw(*args, [True, False, False]),
                'dw': lambda: bw(*args, [False, True, False])}


def convs(args):
    impls = args.impls.split(',')
    if 'pytorch' in impls:
        import torch
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(0)
    rows, totals = [], {(i, p): 0.0 for i in impls for p in ('fwd', 'dx', 'dw')}
    for hw, cin, cout, s, count in RESNET20:
        x = jnp.asarray(rng.standard_normal((args.batch, hw, hw, cin), np.float32))
        k = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * 0.1)
        fns = {i: torch_fns(x, k, (s, s)) if i == 'pytorch' else jax_fns(i, x, k, (s, s))
               for i in impls}
        times = {(i, p): [] for i in impls for p in ('fwd', 'dx', 'dw')}
        for i in impls:
            for f in fns[i].values():
                f(), f()  # compile + warm up
        for _ in range(args.repeats):  # interleaved rounds
            for p in ('fwd', 'dx', 'dw'):
                for i in impls:
                    t = time.perf_counter()
                    for _ in range(args.calls):
                        fns[i][p]()
                    times[i, p].append((time.perf_counter() - t) / args.calls * 1e3)
        med = {key: statistics.median(v) for key, v in times.items()}
        for key, v in med.items():
            totals[key] += v * count
        rows.append((f'{hw}x{hw}x{cin}->{cout} s{s} (x{count})', med))
        if any(i.startswith('onednn') for i in impls):
            info = [oc.impl_info(p, (args.batch // 8, *x.shape[1:]), k.shape, (s, s), PADS)
                    for p in ('fwd', 'bwd_data', 'bwd_weights')]
            rows[-1] += (info,)
    print(f'per-call ms, median of {args.repeats} interleaved rounds x {args.calls} calls; '
          f'batch {args.batch}; {len(os.sched_getaffinity(0))} usable cores')
    head = ''.join(f'{i + " " + p:>15s}' for p in ('fwd', 'dx', 'dw') for i in impls)
    print(f'{"conv":28s}{head}')
    for row in rows:
        name, med = row[:2]
        print(f'{name:28s}' + ''.join(f'{med[i, p]:15.2f}' for p in ('fwd', 'dx', 'dw')
                                      for i in impls) + (f'  {row[2]}' if len(row) > 2 else ''))
    print(f'{"step total (19 convs)":28s}' + ''.join(
        f'{totals[i, p]:15.1f}' for p in ('fwd', 'dx', 'dw') for i in impls))
    for i in impls:
        print(f'  {i:8s} fwd+dx+dw {sum(totals[i, p] for p in ("fwd", "dx", "dw")):7.1f} ms')


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('mode', choices=['convs'])
    p.add_argument('--impls', default='xla,fast,onednn,pytorch')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--calls', type=int, default=5)
    convs(p.parse_args())


if __name__ == '__main__':
    main()
