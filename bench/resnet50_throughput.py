"""ResNet-50 training throughput of camjax's real train step, from synthetic
device-resident batches and through camjax's input pipeline.

The step is the one the CLI runs (`bench/cli_step.py`: `make_train_step`
over the ('data',) mesh of every device, state donated, the config's SGD
schedule, the non-finite guard), built from a camjax config with
`model.dtype` (bf16 by default). Measured, each after compiling and warming up:

  synthetic  --rotate different global batches of random uint8 images, placed
             batch-sharded on the devices beforehand and cycled, so no host
             transfer is timed; each timed round runs --steps steps and
             blocks once, at its end. The figure is set against --goal.
  pipeline   camjax's grain pipeline (`camjax.data.TrainBatches`, as a
             training run uses it) on an image folder of JPEGs: --data DIR
             (`DIR/train/<class>/*.jpg` and `DIR/test/...`; or a dataset.name
             such as tinyimagenet:DIR), or by default a
             temporary folder of --images random 256x256 JPEGs in 10 classes,
             decoded and resized to --size by the pipeline on
             --num-threads reader threads. Timed: the pipeline alone (batches
             on the devices, no step), then pipeline + step. The pipeline
             rounds run back to back, after the synthetic ones, so that the
             prefetch buffer is in its steady state when a round starts.

Every figure line names the device kind. Reported per measurement: the median
images/s over rounds (the per-round rates' median) and their min-max.

  python bench/resnet50_throughput.py                       # 224px bf16 batch 256, both
  python bench/resnet50_throughput.py --modes synthetic --batch 512
  python bench/resnet50_throughput.py --data /path/to/imagefolder --num-threads 32
  python bench/resnet50_throughput.py --smoke               # seconds on a CPU: wiring only
"""

import argparse
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_step  # noqa: E402

from camjax.data import TrainBatches, open_splits  # noqa: E402

MODES = ('synthetic', 'pipeline')


def write_jpeg_folder(root: str, *, images: int, classes: int, side: int, seed: int = 0) -> None:
    """`images` random side x side JPEGs (quality 90) in `classes` classes under
    root/train, one per class under root/test (the imagefolder layout needs
    both). Smooth colour fields plus noise: photo-like file sizes, not the
    much larger files of pure noise."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**31, images + classes)

    def one(i):
        split, label = ('train', i % classes) if i < images else ('test', i - images)
        r = np.random.default_rng(seeds[i])
        coarse = Image.fromarray(r.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((side, side), Image.BICUBIC), np.float32)
        pixels = np.clip(field + r.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        folder = os.path.join(root, split, f'class{label:03d}')
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(folder, f'{i:06d}.jpg'), quality=90)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, range(images + classes)))


def timed(stepper, args, *, extra_warmup: int = 0) -> dict:
    stepper.run(args.warmup + extra_warmup)
    seconds = [stepper.run(args.steps) for _ in range(args.rounds)]
    return cli_step.summarize(seconds, images_per_round=args.batch * args.steps)


class PipelineOnly:
    """`run(n)`: the seconds to take n global batches from the pipeline onto
    the devices, blocking once at the end (the pipeline's own ceiling)."""

    def __init__(self, batches):
        self.batches = batches

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        last = [next(self.batches) for _ in range(n)][-1]
        jax.block_until_ready(last)
        return time.perf_counter() - t0


def fmt(kind: str, what: str, r: dict) -> str:
    return (f'[{kind}] {what}: {r["median"]:.1f} img/s (median of {r["rounds"]} rounds; '
            f'min-max {r["min"]:.1f}-{r["max"]:.1f})')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='resnet50_imagenet')
    p.add_argument('--size', type=int, default=224, help='model input side')
    p.add_argument('--batch', type=int, default=256, help='global batch')
    p.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16'])
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--modes', default=','.join(MODES), help='synthetic,pipeline (comma-separated)')
    p.add_argument('--steps', type=int, default=20, help='steps per timed round')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--warmup', type=int, default=5, help='untimed steps before each measurement')
    p.add_argument('--rotate', type=int, default=4, help='device-resident synthetic batches')
    p.add_argument('--goal', type=float, default=5000.0, help='synthetic img/s goal')
    p.add_argument('--data', default='',
                   help='an imagefolder root, or any dataset.name (tinyimagenet:DIR, ...); '
                        'default: generated JPEGs')
    p.add_argument('--images', type=int, default=2560, help='generated JPEGs (train)')
    p.add_argument('--image-side', type=int, default=256, help='generated JPEGs are this square')
    p.add_argument('--num-threads', type=int, default=os.cpu_count(),
                   help='dataset.num_threads: grain reader threads')
    p.add_argument('--prefetch', type=int, default=8, help='dataset.prefetch (batches)')
    p.add_argument('--smoke', action='store_true',
                   help='wiring check for a CPU: a one-block-per-stage width-8 ResNet-50 at '
                        '32px, batch 4, 2 rounds x 2 steps, 40 generated 48px JPEGs')
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(',') if m]
    if set(modes) - set(MODES):
        p.error(f'--modes: choose from {MODES}')
    model_fields = {}
    if args.smoke:
        model_fields = {'stage_sizes': (1, 1, 1, 1), 'width': 8}
        args.size, args.batch, args.steps, args.rounds, args.warmup = 32, 4, 2, 2, 1
        args.rotate, args.images, args.image_side, args.num_classes = 2, 40, 48, 10
        args.num_threads, args.prefetch = 2, 2

    kind = jax.devices()[0].device_kind
    config = cli_step.bench_config(model=args.model, image_size=args.size,
                                   batch_size=args.batch, dtype=args.dtype, **model_fields)
    tmp = None
    try:
        if 'pipeline' in modes:
            if args.data:
                source = args.data if ':' in args.data else f'imagefolder:{args.data}'
                what = 'camjax dataset'
            else:
                tmp = root = tempfile.mkdtemp(prefix='camjax-jpegs-')
                write_jpeg_folder(root, images=args.images, classes=10, side=args.image_side)
                source = f'imagefolder:{root}'
                what = (f'{args.images} generated {args.image_side}x{args.image_side} JPEGs '
                        '(10 classes)')
            d = config.dataset
            d.name, d.val_fraction = source, 0.0
            d.num_threads, d.prefetch = args.num_threads, args.prefetch
        cli = cli_step.build(config, num_classes=args.num_classes)
        shape = (f'{args.model}{" (smoke: " + str(model_fields) + ")" if args.smoke else ""} '
                 f'{args.size}x{args.size} {args.dtype}, global batch {args.batch}, '
                 f'{args.num_classes}-class head')
        print(f'device: {cli_step.device_label()}, jax {jax.__version__}, {os.cpu_count()} CPUs')
        print(f'[{kind}] model: {shape}; camjax CLI train step (state donated, batch sharded '
              f'over {cli.mesh.devices.size} device(s)); {args.rounds} rounds x {args.steps} '
              f'steps after {args.warmup} warm-up steps', flush=True)
        batches = cli.synthetic_batches(args.rotate)
        compile_s = cli_step.compile_step(cli, batches[0])
        print(f'[{kind}] compiled the step in {compile_s:.1f} s', flush=True)
        stepper = cli_step.Stepper(cli, batches)
        synthetic = None
        if 'synthetic' in modes:
            synthetic = timed(stepper, args)
            verdict = 'MET' if synthetic['median'] >= args.goal else 'NOT MET'
            print(f'{fmt(kind, "synthetic batches, train step", synthetic)}; goal '
                  f'>= {args.goal:.0f} img/s: {verdict} ({synthetic["median"] / args.goal:.2f}x '
                  'of goal)', flush=True)
        if 'pipeline' in modes:
            splits = open_splits(config.dataset)
            if splits.num_classes > args.num_classes:
                raise SystemExit(f'resnet50_throughput: {source} has {splits.num_classes} '
                                 f'classes, the model {args.num_classes}; raise --num-classes')
            print(f'[{kind}] input: {what} {source}; {splits.sizes["train"]} training images '
                  f'resized to {args.size} by camjax\'s grain pipeline, {args.num_threads} '
                  f'reader threads, prefetch {args.prefetch}', flush=True)

            def pipeline():
                return TrainBatches(splits.train, cfg=config.dataset, global_batch=args.batch,
                                    seed=config.seed, sharding=cli.batch_sharding)

            # Warm-up also drains what the prefetch buffer filled before timing starts.
            only = PipelineOnly(pipeline())
            alone = timed(only, args, extra_warmup=args.prefetch)
            del only  # its reader threads stop
            print(fmt(kind, 'input pipeline alone (batches onto the devices, no step)', alone),
                  flush=True)
            both = timed(cli_step.Stepper(cli, pipeline(), state=stepper.state), args,
                         extra_warmup=args.prefetch)
            ratio = (f'; {both["median"] / synthetic["median"]:.2f}x of synthetic'
                     if synthetic else '')
            print(f'{fmt(kind, "input pipeline + train step", both)}{ratio}', flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
