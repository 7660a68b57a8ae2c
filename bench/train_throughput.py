"""End-to-end training throughput on CIFAR-10 JPEGs: camjax's command line vs
a PyTorch DataLoader loop, on the same image folder.

Both train CIFAR ResNet-20 (configs/cifar10_resnet20.py: batch 128, SGD lr
0.1, momentum 0.9, no Nesterov, weight decay 1e-4, step schedule) for --steps
steps from JPEG files: decode, random crop (zero padding 4) and horizontal
flip, host-to-device, train step. Reported: images/s over the steps after
the first --warmup-steps (compile and warm-up, excluded), and camjax /
PyTorch.

  camjax   the CLI itself, as a user runs it: `python -m camjax.main
           --config=configs/cifar10_resnet20.py --config.dataset.name=
           imagefolder:<data>` with train.num_steps=--steps and
           train.log_every=--log-every, in a subprocess and a temporary
           workdir. Its grain pipeline reads with dataset.num_threads reader
           threads (the config's, 2 unless --workers) and sends uint8 batches
           to the device, normalized inside the step. Images/s comes from the
           `images_per_s` of its metrics.jsonl train records (each covers the
           steps since the previous one, measured at the loop's host sync),
           combined over the windows after --warmup-steps as total images /
           total time. train.eval_every and train.checkpoint_every are set to
           --steps, so the one evaluation and the one checkpoint come after
           the last timed window (by default they fall once per epoch, which
           a short timing should not include); the script checks this.
  PyTorch  eager, in this process: a `torch.utils.data.DataLoader` (shuffle,
           drop_last, the same number of worker processes as camjax's reader
           threads) over train/ of the same folder, with
           torchvision.datasets.ImageFolder and RandomCrop(32, padding=4),
           RandomHorizontalFlip, ToTensor, Normalize(the config's CIFAR
           mean/std) when torchvision imports; else the same as a minimal
           dataset and transforms written with PIL, numpy and torch (printed).
           The model is camjax's ResNet-20 mirrored in torch
           (bench/step_throughput.py, checked equal in the tests), the
           optimizer torch.optim.SGD with the config's hyper-parameters and
           its step schedule (MultiStepLR), cross-entropy; intra-op threads =
           usable cores. It prints loss and accuracy every --log-every steps,
           as the CLI does; images/s is over the steps after --warmup-steps.

Differences that remain, by design: camjax trains on train/ less its 10%
validation carve (45,000 images, 351 steps an epoch at batch 128) and
PyTorch on all of train/ (50,000, 390 steps): the default --steps 200 stays
inside one epoch for both. camjax normalizes on the device, torch in its
workers (each library's usual place). camjax runs its non-finite guard.
The two loops run one after the other, not interleaved (--repeats N
alternates them N times and reports medians): run on an idle machine (on a
loaded one, PyTorch's OpenMP threads wait at barriers for descheduled
peers and its figures collapse; --torch-threads 1 shows it). The CLI uses
its persistent compilation cache as usual, which only shortens the
excluded steps.

Data: --data DIR (train/<class>/*.jpg, test/<class>/*.jpg), or by default
../shared/data/cifar10-jpeg.tar.gz unpacked once into --cache
(~/.cache/camjax/bench/cifar10). Without either the script says so and
exits 0. PyTorch is optional (extra `bench`); without it the reference is
reported as skipped.

  python bench/train_throughput.py                     # 200 steps, first 50 excluded
  python bench/train_throughput.py --steps 200 --warmup-steps 50 --no-torch
"""

import argparse
import ast
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import archives  # noqa: E402
import step_throughput  # noqa: E402  (the torch ResNet mirror and optimizer)

from camjax.config.files import load_config_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = os.path.join(ROOT, '..', 'shared', 'data', 'cifar10-jpeg.tar.gz')
DEFAULT_CACHE = os.path.join('~', '.cache', 'camjax', 'bench', 'cifar10')
CONFIG = os.path.join('configs', 'cifar10_resnet20.py')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')


# =============================================================================
# Data and config
# =============================================================================
def unpacked_cifar10(archive: str, cache: str) -> str:
    """`cache`, holding `archive` unpacked (train/, test/; once)."""
    return archives.unpacked(archive, cache, expect=('train', 'test'))


def cli_overrides(args, data: str) -> dict:
    """{field path: value as written on the command line}: the --config.*
    overrides the CLI run is given (module doc), --set ones last."""
    fields = {'dataset.name': f'imagefolder:{data}', 'train.num_steps': args.steps,
              'train.log_every': args.log_every, 'train.eval_every': args.steps,
              'train.checkpoint_every': args.steps, 'train.batch_size': args.batch}
    if args.workers is not None:
        fields['dataset.num_threads'] = args.workers
    fields = {k: str(v) for k, v in fields.items()}
    for item in args.set:
        path, sep, value = item.partition('=')
        if not sep:
            raise SystemExit(f'--set {item!r}: expected PATH=VALUE')
        fields[path] = value
    return fields


def apply(config, fields: dict):
    """`config` with the command-line `fields` set, parsed as Python literals
    where they are ones (else strings), as ml_collections parses them."""
    import ml_collections
    for path, raw in fields.items():
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if isinstance(value, dict):
            value = ml_collections.ConfigDict(value)
        *groups, key = path.split('.')
        node = config
        for group in groups:
            node = node[group]
        node[key] = value
    return config


# =============================================================================
# camjax: the CLI in a subprocess
# =============================================================================
def window_rate(records, *, batch: int, after_step: int) -> tuple[float, int]:
    """(images/s, steps) over the train windows that start at or after
    `after_step`: total images / total time, each window's time being its
    images / its images_per_s."""
    images = seconds = 0.0
    steps, prev = 0, 0
    for r in sorted((r for r in records if r.get('kind') == 'train'), key=lambda r: r['step']):
        n = r['step'] - prev
        if prev >= after_step and n > 0:
            images += n * batch
            seconds += n * batch / r['images_per_s']
            steps += n
        prev = r['step']
    return (images / seconds if seconds else float('nan')), steps


def run_camjax(args, data: str) -> float:
    """The CLI's images/s after the warm-up steps (module doc)."""
    workdir = tempfile.mkdtemp(prefix='camjax-train-throughput-')
    try:
        cmd = [sys.executable, '-m', 'camjax.main', f'--config={args.config}',
               f'--workdir={workdir}',
               *(f'--config.{k}={v}' for k, v in cli_overrides(args, data).items())]
        print('camjax: ' + ' '.join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('step '):
                print(f'  camjax | {line.rstrip()}', flush=True)
        if proc.wait():
            sys.stdout.write(''.join(lines[-40:]))
            raise SystemExit(f'the camjax run failed (exit {proc.returncode})')
        wall = time.perf_counter() - t0
        with open(os.path.join(workdir, 'metrics.jsonl')) as f:
            records = [json.loads(line) for line in f if line.strip()]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    inside = sorted({r['step'] for r in records
                     if r.get('kind') == 'eval' and r.get('step', args.steps) < args.steps})
    if inside:  # cannot happen with eval_every = num_steps; a config change would show here
        print(f'  camjax | WARNING: evaluations at steps {inside} fall inside timed windows')
    rate, steps = window_rate(records, batch=args.batch, after_step=args.warmup_steps)
    print(f'  camjax | {rate:.1f} img/s over steps {args.warmup_steps + 1}-{args.steps} '
          f'({steps} steps); whole run {wall:.0f} s (start-up, compile, final eval and '
          'checkpoint included)', flush=True)
    return rate


# =============================================================================
# PyTorch: a DataLoader loop in this process
# =============================================================================
class FolderDataset:
    """torchvision.datasets.ImageFolder's core: root/<class>/<image> files,
    classes in sorted order, PIL-decoded to RGB, `transform`ed."""

    def __init__(self, root: str, transform):
        self.classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
        self.samples = [(os.path.join(root, c, name), label)
                        for label, c in enumerate(self.classes)
                        for name in sorted(os.listdir(os.path.join(root, c)))
                        if name.lower().endswith(IMAGE_SUFFIXES)]
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        from PIL import Image
        path, label = self.samples[index]
        with open(path, 'rb') as f:
            image = Image.open(f).convert('RGB')
        return self.transform(image), label


class CifarTrainTransform:
    """torchvision's RandomCrop(size, padding) (zero fill), RandomHorizontalFlip,
    ToTensor and Normalize(mean, std), on a PIL image, with torch's RNG as
    torchvision draws them."""

    def __init__(self, *, size: int, padding: int, flip: bool, mean, std):
        import torch
        self.size, self.padding, self.flip = size, padding, flip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image):
        import torch
        a, p = np.asarray(image), self.padding
        if p:
            a = np.pad(a, ((p, p), (p, p), (0, 0)))
        h, w = a.shape[:2]
        i = int(torch.randint(0, h - self.size + 1, (1,)))
        j = int(torch.randint(0, w - self.size + 1, (1,)))
        a = a[i:i + self.size, j:j + self.size]
        if self.flip and float(torch.rand(1)) < 0.5:
            a = a[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div(255)
        return (x - self.mean) / self.std


def torch_dataset(root: str, d):
    """(dataset, description): torchvision's ImageFolder + transforms if
    torchvision imports, else FolderDataset + CifarTrainTransform."""
    try:
        from torchvision import datasets, transforms
    except Exception as e:  # noqa: BLE001  (a mismatched wheel raises RuntimeError)
        reason = ' '.join(str(e).split())[:80]
        tf = CifarTrainTransform(size=d.image_size, padding=d.crop_padding, flip=d.random_flip,
                                 mean=d.mean, std=d.std)
        return FolderDataset(root, tf), (f'PIL + torch dataset and transforms (torchvision '
                                         f'not importable: {type(e).__name__}: {reason})')
    steps = [transforms.RandomCrop(d.image_size, padding=d.crop_padding)] if d.crop_padding \
        else [transforms.RandomCrop(d.image_size)]
    if d.random_flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(tuple(d.mean), tuple(d.std))]
    return datasets.ImageFolder(root, transform=transforms.Compose(steps)), \
        'torchvision ImageFolder + transforms'


def run_torch(args, data: str, config) -> float | None:
    """The PyTorch loop's images/s after the warm-up steps (module doc); None
    when torch is absent."""
    try:
        import torch
    except ImportError:
        print('PyTorch reference skipped: torch is not importable (pip install torch==2.13.0)')
        return None
    d, t = config.dataset, config.train
    depth = step_throughput.cifar_depth(config.model.name)
    if depth is None:
        print(f'PyTorch reference skipped: no mirror of model {config.model.name!r}')
        return None
    dataset, kind = torch_dataset(os.path.join(data, d.train_split), d)
    workers = d.num_threads
    loader = torch.utils.data.DataLoader(dataset, batch_size=t.batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads or step_throughput.usable_cores())
    torch.manual_seed(config.seed)
    model = step_throughput.torch_cifar_resnet(
        depth, len(dataset.classes), **step_throughput.model_width(config)).train()
    opt_sched = step_throughput.torch_optimizer(
        model, config.optimizer, total_steps=t.num_steps,
        steps_per_epoch=max(len(dataset) // t.batch_size, 1))
    if opt_sched is None:
        print(f'PyTorch reference skipped: no mirror of optimizer {config.optimizer.name}')
        return None
    step = step_throughput.make_torch_step(model, *opt_sched)
    print(f'PyTorch: torch {torch.__version__} eager; {kind}; DataLoader over {len(dataset)} '
          f'images, {workers} workers, batch {t.batch_size}; intra-op threads '
          f'{torch.get_num_threads()} (default here {default_threads}), inter-op '
          f'{torch.get_num_interop_threads()}', flush=True)

    done, start, sums = 0, None, [0.0, 0.0]
    batches = iter(loader)
    window_t0 = t0 = time.perf_counter()
    while done < t.num_steps:
        try:
            x, y = next(batches)
        except StopIteration:  # a new epoch: a new pass (and workers), as a user's loop
            batches = iter(loader)
            continue
        loss, accuracy = step(x, y)
        sums[0] += loss
        sums[1] += accuracy
        done += 1
        if done % t.log_every == 0 or done == t.num_steps:
            now, n = time.perf_counter(), done % t.log_every or t.log_every
            print(f'  torch  | step {done}/{t.num_steps} | loss {float(sums[0]) / n:.4f} | acc '
                  f'{float(sums[1]) / n:.3f} | {n * t.batch_size / (now - window_t0):.0f} img/s',
                  flush=True)
            sums, window_t0 = [0.0, 0.0], time.perf_counter()
        if done == args.warmup_steps:
            start = time.perf_counter()
    end = time.perf_counter()
    rate = (t.num_steps - args.warmup_steps) * t.batch_size / (end - start)
    print(f'  torch  | {rate:.1f} img/s over steps {args.warmup_steps + 1}-{t.num_steps} '
          f'({t.num_steps - args.warmup_steps} steps); whole loop {end - t0:.0f} s', flush=True)
    return rate


# =============================================================================
# Main
# =============================================================================
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=200, help='training steps of each loop')
    p.add_argument('--warmup-steps', type=int, default=50,
                   help='first steps excluded (compile, warm-up); a multiple of --log-every')
    p.add_argument('--log-every', type=int, default=25)
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--workers', type=int, default=None,
                   help="camjax reader threads = PyTorch DataLoader workers (default: the "
                        "config's dataset.num_threads)")
    p.add_argument('--repeats', type=int, default=1, help='alternating runs of each loop')
    p.add_argument('--config', default=CONFIG, help='camjax config file, relative to the repo')
    p.add_argument('--data', help='image folder (train/, test/); default: the archive, unpacked')
    p.add_argument('--archive', default=ARCHIVE)
    p.add_argument('--cache', default=DEFAULT_CACHE, help='where the archive is unpacked')
    p.add_argument('--set', action='append', default=[], metavar='PATH=VALUE',
                   help="a further config override for both loops, as the CLI's "
                        "--config.PATH=VALUE, e.g. --set \"model={'name': 'resnet8', "
                        "'width': 4}\" (a model field the config file leaves out needs the "
                        'whole group)')
    p.add_argument('--no-torch', action='store_true', help='skip the PyTorch reference')
    p.add_argument('--torch-threads', type=int, default=0,
                   help='PyTorch intra-op threads (default 0: one per usable core)')
    args = p.parse_args(argv)
    if args.warmup_steps % args.log_every or args.steps % args.log_every \
            or not 0 < args.warmup_steps < args.steps:
        p.error('--steps and --warmup-steps must be multiples of --log-every, '
                '0 < warmup-steps < steps')

    if args.data:
        data = os.path.abspath(args.data)
    elif not os.path.exists(args.archive):
        print(f'skipped: {os.path.normpath(args.archive)} is not present (no CIFAR-10 JPEGs; '
              'pass --data DIR with train/<class>/*.jpg and test/<class>/*.jpg)')
        return None
    else:
        data = unpacked_cifar10(args.archive, args.cache)
    config = load_config_file(os.path.join(ROOT, args.config))
    config = apply(config, cli_overrides(args, data))  # as the CLI's

    print(f'{config.model.name} on {data}: batch {args.batch}, {args.steps} steps per loop, '
          f'the first {args.warmup_steps} excluded (compile, warm-up); '
          f'{config.dataset.num_threads} reader threads / workers; '
          f'{step_throughput.usable_cores()} usable cores', flush=True)
    rates = {'camjax': [], 'pytorch': []}
    for _ in range(args.repeats):
        rates['camjax'].append(run_camjax(args, data))
        if not args.no_torch:
            rate = run_torch(args, data, config)
            if rate is None:
                break
            rates['pytorch'].append(rate)
    if args.no_torch:
        print('PyTorch reference skipped: --no-torch')

    medians = {k: statistics.median(v) for k, v in rates.items() if v}
    print(f'\n{"loop":8s} {"img/s":>9s} {"runs":>5s}')
    for k, v in medians.items():
        print(f'{k:8s} {v:9.1f} {len(rates[k]):5d}')
    if 'pytorch' in medians:
        print(f'\ncamjax / PyTorch: {medians["camjax"] / medians["pytorch"]:.2f}x')
    return medians


if __name__ == '__main__':
    main()
