"""Train-step throughput: camjax's CLI train step (conv_impl 'xla', 'fast' and
the default 'auto') vs the same step in PyTorch eager, in one run.

camjax: the step `python -m camjax.main` runs, built from a camjax config by
bench/cli_step.py (`camjax.training.train.build_training`): the objective
from `config.loss` (cross-entropy), uint8 images normalized inside the step
((x/255 - mean) / std, dataset.mean/std), the schema-default optimizer (SGD,
momentum 0.9, Nesterov, coupled weight decay 5e-4, cosine schedule), the
('data',) mesh shardings, the donated state and the non-finite guard; it
returns (loss, accuracy) metrics. One row per --impls entry; 'auto' says what
it resolved to on this backend.

PyTorch (CIFAR ResNets, camjax on CPU only): the same network (3x3 stem,
option-A shortcuts, BatchNorm momentum 0.1 = flax 0.9, eps 1e-5, GAP +
linear), `torch.optim.SGD` with the camjax config's learning rate, momentum,
Nesterov flag and weight decay plus `CosineAnnealingLR` over the same number
of steps, cross-entropy, the same uint8 -> float normalization inside the
step, and the batch accuracy. It is given the same uint8 images and labels,
in its own NCHW layout (what `PILToTensor` yields), as camjax is in NHWC.
Not in PyTorch: the non-finite guard (camjax checks every updated tensor).

Both sides cycle the same --rotate batches, already in memory (no input
pipeline; see bench/train_throughput.py for the whole loop). Implementations
are timed in interleaved rounds so that background load hits them alike;
each reports the median over rounds of images/s and its ratio to PyTorch.
Still, run it on an idle machine: under load PyTorch's OpenMP threads wait
at barriers for descheduled peers and its figures collapse (--torch-threads
1 shows it).
Compile time: the first call of each camjax step (a fresh jit: trace,
compile, one step) with the persistent compilation cache turned off, so it
is a real compile.

  python bench/step_throughput.py                      # ResNet-20, batch 128, 32x32
  python bench/step_throughput.py --steps 5 --repeats 3
  python bench/step_throughput.py --impls fast --no-torch

ResNet-50 224px bf16 on a GPU: bench/resnet50_throughput.py. PyTorch (`pip
install torch`, extra `bench`) is optional; without it the reference is
reported as skipped.
"""

import argparse
import os
import re
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_step  # noqa: E402

from camjax.models.layers import conv_class  # noqa: E402


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolved_impl(impl: str) -> str:
    """'xla' or 'fast': what `impl` ('auto' included) builds on this backend."""
    from camjax.models.fast_conv import FastConv
    return 'fast' if conv_class(impl) is FastConv else 'xla'


def camjax_stepper(impl: str, args):
    """(Stepper on --rotate device batches, first-call seconds, CliStep)."""
    width = {} if args.width is None else {'width': args.width}
    config = cli_step.bench_config(model=args.model, image_size=args.size,
                                   batch_size=args.batch, dtype=args.dtype, conv_impl=impl,
                                   **width)
    cli = cli_step.build(config, num_classes=args.num_classes)
    stepper = cli_step.Stepper(cli, cli.synthetic_batches(args.rotate))
    first_call_s = stepper.run(1)  # a fresh jit: trace + compile + one step
    return stepper, first_call_s, cli


def torch_cifar_resnet(depth: int, num_classes: int, width: int = 16):
    """camjax's CifarResNet (camjax/models/resnet.py) in PyTorch eager, NCHW:
    3x3 stem + BatchNorm + ReLU, 3 stages of n = (depth - 2) / 6 basic blocks
    with widths (w, 2w, 4w) and option-A shortcuts (subsample, zero-pad the
    channels by (pad // 2, pad - pad // 2)), BatchNorm momentum 0.1 (= flax
    0.9) and eps 1e-5, global average pool + linear."""
    import torch.nn as tnn
    import torch.nn.functional as F

    if (depth - 2) % 6:
        raise ValueError(f'CIFAR ResNet depth must be 6n+2, got {depth}')

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = tnn.BatchNorm2d(cout)
            self.c2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = tnn.BatchNorm2d(cout)
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
            if self.stride != 1 or self.pad:  # option A
                x = F.pad(x[:, :, ::self.stride, ::self.stride],
                          (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return F.relu(x + y)

    class CifarResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Sequential(tnn.Conv2d(3, width, 3, 1, 1, bias=False),
                                       tnn.BatchNorm2d(width), tnn.ReLU())
            blocks, cin = [], width
            for stage in range(3):
                for b in range((depth - 2) // 6):
                    cout = width * 2**stage
                    blocks.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
                    cin = cout
            self.blocks = tnn.Sequential(*blocks)
            self.fc = tnn.Linear(cin, num_classes)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x)).mean((2, 3)))

    return CifarResNet()


def load_camjax_weights(model, params, batch_stats) -> None:
    """Copy a camjax CifarResNet's `params` and `batch_stats` into its
    `torch_cifar_resnet` mirror `model` (HWIO -> OIHW kernels), so both start
    from the same weights."""
    import numpy as np
    import torch

    def t(x, *perm):
        x = np.array(x, np.float32)  # a writable host copy
        return torch.from_numpy(np.ascontiguousarray(x.transpose(*perm) if perm else x))

    def conv(module, p):
        module.weight.data.copy_(t(p['kernel'], 3, 2, 0, 1))

    def norm(module, p, stats):
        module.weight.data.copy_(t(p['scale']))
        module.bias.data.copy_(t(p['bias']))
        module.running_mean.copy_(t(stats['mean']))
        module.running_var.copy_(t(stats['var']))

    conv(model.stem[0], params['Conv_0'])
    norm(model.stem[1], params['BatchNorm_0'], batch_stats['BatchNorm_0'])
    for i, block in enumerate(model.blocks):
        p, s = params[f'BasicBlock_{i}'], batch_stats[f'BasicBlock_{i}']
        conv(block.c1, p['Conv_0'])
        norm(block.b1, p['BatchNorm_0'], s['BatchNorm_0'])
        conv(block.c2, p['Conv_1'])
        norm(block.b2, p['BatchNorm_1'], s['BatchNorm_1'])
    model.fc.weight.data.copy_(t(params['classifier']['kernel'], 1, 0))
    model.fc.bias.data.copy_(t(params['classifier']['bias']))


def torch_optimizer(model, cfg, *, total_steps: int, steps_per_epoch: int):
    """(optimizer, per-step lr scheduler) mirroring camjax/training/optim.py
    for `cfg` (a config.optimizer): SGD with momentum, Nesterov flag and
    coupled weight decay (grad += wd * w: torch's SGD weight_decay) on every
    parameter; cosine to 0 over `total_steps`, step decay by step_factor at
    step_epochs, or constant. None when `cfg` has no mirror here (adamw,
    warmup, linear lr scaling)."""
    import torch
    if cfg.name != 'sgd' or cfg.warmup_epochs or cfg.reference_batch_size:
        return None
    opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.schedule == 'cosine':
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    elif cfg.schedule == 'step':
        # camjax's boundaries; from that step on both use lr * step_factor
        milestones = sorted({int(round(e * steps_per_epoch)) for e in cfg.step_epochs} - {0})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=cfg.step_factor)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def make_torch_step(model, opt, sched, *, bf16: bool = False):
    """`step(x, labels) -> (loss, accuracy)`: one training step of `model` on
    normalized float NCHW `x`: forward (BatchNorm in train mode),
    cross-entropy, backward, `opt` and `sched` steps, the batch accuracy."""
    import torch
    import torch.nn.functional as F

    def step(x, labels):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            accuracy = (logits.argmax(1) == labels).float().mean()
        return loss.detach(), accuracy

    return step


def cifar_depth(model_name: str) -> int | None:
    """The depth of a CIFAR ResNet name ('resnet20' -> 20), else None."""
    m = re.fullmatch(r'resnet(\d+)', model_name)
    return int(m.group(1)) if m and (int(m.group(1)) - 2) % 6 == 0 else None


def torch_cli_step(cli, *, bf16: bool = False):
    """`step(images, labels) -> (loss, accuracy)`: `cli`'s camjax step in
    PyTorch eager (module doc) on uint8 NCHW `images`, normalized inside it,
    starting from `cli.state`'s weights. None when the config has no mirror
    here (not a CIFAR ResNet; an optimizer `torch_optimizer` lacks)."""
    import torch
    c = cli.config
    depth = cifar_depth(c.model.name)
    if depth is None:
        return None
    model = torch_cifar_resnet(depth, cli.num_classes, **model_width(c)).train()
    load_camjax_weights(model, cli.state.params, cli.state.batch_stats)
    # steps_per_epoch: cli_step.build's default plan (100 batches an epoch)
    opt_sched = torch_optimizer(model, c.optimizer, total_steps=c.train.num_steps,
                                steps_per_epoch=100)
    if opt_sched is None:
        return None
    train_step = make_torch_step(model, *opt_sched, bf16=bf16)
    mean = torch.tensor(c.dataset.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(c.dataset.std, dtype=torch.float32).view(1, 3, 1, 1)

    def step(images, labels):
        return train_step((images.float() / 255.0 - mean) / std, labels)

    step.model = model
    return step


def torch_batch(host: dict):
    """A cli_step host batch for torch: uint8 NCHW images (NHWC transposed, as
    PILToTensor lays them out) and int64 labels."""
    import torch
    return (torch.from_numpy(host['image']).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(host['label']).long())


def torch_stepper(cli, args):
    """(run(n) -> seconds, info), or (None, why not): `torch_cli_step` on the
    --rotate batches camjax cycles, in the same order."""
    try:
        import torch
    except ImportError:
        return None, 'torch is not importable (pip install torch==2.13.0)'
    if jax.default_backend() != 'cpu':
        return None, f'PyTorch reference runs on CPU only; camjax runs on {jax.default_backend()}'
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads or usable_cores())  # per core: torch's default
    step = torch_cli_step(cli, bf16=args.dtype == 'bfloat16')
    if step is None:
        return None, (f'no PyTorch mirror of model {args.model!r} (only CIFAR resnet6n+2) or '
                      f'optimizer {cli.config.optimizer.name} (no warmup, lr scaling)')
    batches = [torch_batch(cli.host_batch(i)) for i in range(args.rotate)]
    box = {'i': 0, 'first_loss': None}

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            loss, _ = step(*batches[box['i'] % len(batches)])
            box['i'] += 1
        seconds = time.perf_counter() - t0
        if n and box['first_loss'] is None:
            box['first_loss'] = float(loss)
        return seconds

    run(1)
    o, t = cli.config.optimizer, cli.config.train
    info = (f'torch {torch.__version__} eager, SGD lr {o.learning_rate} momentum {o.momentum} '
            f'nesterov {o.nesterov} weight decay {o.weight_decay}, {o.schedule} over '
            f'{t.num_steps} steps; intra-op threads {torch.get_num_threads()} (its default '
            f'here: {default_threads}), inter-op {torch.get_num_interop_threads()}; '
            f'first loss {box["first_loss"]:.4f} (camjax\'s weights, batch 0)')
    return run, info


def model_width(config) -> dict:
    """{'width': w} when the camjax config sets the CIFAR ResNet's width."""
    width = dict(config.model).get('width')
    return {} if width is None else {'width': width}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='resnet20')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--size', type=int, default=32, help='input height = width')
    p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
    p.add_argument('--num-classes', type=int, default=10)
    p.add_argument('--width', type=int, default=None, help="model.width (default: the model's)")
    p.add_argument('--impls', default='xla,fast,auto', help='camjax conv_impls, comma-separated')
    p.add_argument('--steps', type=int, default=10, help='steps per timed round')
    p.add_argument('--repeats', type=int, default=5, help='timed rounds (median is reported)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps after the first call')
    p.add_argument('--rotate', type=int, default=4, help='distinct batches, cycled')
    p.add_argument('--no-torch', action='store_true', help='skip the PyTorch reference')
    p.add_argument('--torch-threads', type=int, default=0,
                   help='PyTorch intra-op threads (default 0: one per usable core)')
    args = p.parse_args(argv)
    impls = args.impls.split(',')
    # Compile times must be real compiles, not loads from the persistent cache
    # (the environment may point JAX_COMPILATION_CACHE_DIR at a warm one).
    jax.config.update('jax_enable_compilation_cache', False)

    print(f'{args.model} {args.size}x{args.size} {args.dtype} batch {args.batch}; '
          f'jax {jax.__version__} on {cli_step.device_label()}, {usable_cores()} usable cores '
          f'({os.cpu_count()} CPUs); {args.repeats} rounds x {args.steps} steps; '
          'persistent compilation cache off')
    runners, labels, cli = {}, {}, None
    for impl in impls:
        stepper, first_call_s, cli = camjax_stepper(impl, args)
        runners[impl] = stepper.run
        labels[impl] = f'{impl}={resolved_impl(impl)}' if impl == 'auto' else impl
        loss = float(stepper.metrics['loss'])
        print(f'  camjax[{labels[impl]}]: compile (first call: trace + compile + 1 step) '
              f'{first_call_s:.1f} s; first loss {loss:.4f} (batch 0)')
    if jax.default_backend() == 'cpu':  # XLA:CPU sizes its intra-op pool to the usable cores
        print(f'  XLA:CPU threads: its default, one intra-op pool over the {usable_cores()} '
              f"usable cores (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})")
    ref = None
    if args.no_torch:
        print('  PyTorch reference skipped: --no-torch')
    elif cli is None:
        print('  PyTorch reference skipped: no camjax impl to take the config from')
    else:
        run, info = torch_stepper(cli, args)
        if run is None:
            print(f'  PyTorch reference skipped: {info}')
        else:
            ref = labels['pytorch'] = 'pytorch'
            runners[ref] = run
            print(f'  PyTorch reference: {info}')

    for run in runners.values():
        run(args.warmup)
    times = {k: [] for k in runners}
    for _ in range(args.repeats):  # interleaved rounds
        for k, run in runners.items():
            times[k].append(run(args.steps))
    stats = {k: cli_step.summarize(v, images_per_round=args.batch * args.steps)
             for k, v in times.items()}

    print(f'\n{"impl":10s} {"img/s":>9s} {"min-max img/s":>17s} {"vs PyTorch":>11s}')
    for k, s in stats.items():
        ratio = f'{s["median"] / stats[ref]["median"]:.2f}x' if ref else '-'
        spread = f'{s["min"]:.1f}-{s["max"]:.1f}'
        print(f'{labels[k]:10s} {s["median"]:9.1f} {spread:>17s} {ratio:>11s}')
    if 'xla' in stats and 'fast' in stats:
        print(f'\nfast / xla: {stats["fast"]["median"] / stats["xla"]["median"]:.2f}x')
    return stats


if __name__ == '__main__':
    main()
