"""Does camjax's input pipeline keep up with the train step on Tiny ImageNet?
Images/s of the real pipeline against the step's, measured in one run.

  pipeline  camjax's grain pipeline as a training run builds it:
            `camjax.data.TrainBatches` (seeded global shuffle, decode, random
            crop with zero padding 4 and flip, batching, the global batch
            placed on the devices) over the source `open_splits` builds for
            dataset.name='tinyimagenet:DIR' (90,000 train images after the
            10% validation carve), with the schema's default reader threads
            (dataset.num_threads) and prefetch unless --num-threads/--prefetch
            say otherwise. Timed after the prefetch buffer has drained, so a
            round measures what the pipeline produces, not what it stored.
  step      the train step `python -m camjax.main` runs (bench/cli_step.py:
            the config's model, CE, SGD, the ('data',) mesh of every device,
            state donated), on device-resident batches of the same shape,
            compile excluded.

It prints both rates and pipeline / step; the goal is >= --goal (1.5x), so
that augmentation jitter and a busy host never starve the step.

The model is the one a Tiny ImageNet study in camjax would train. camjax
ships no Tiny ImageNet config; the default is ResNet-18 (`resnet18_imagenet`,
camjax's ImageNet ResNet-18, as in configs/imagenet_linrc.py) at the data's
own 64 px, 200 classes, global batch 128 -- the usual Tiny ImageNet baseline.
--model vgg16_gap (configs/cam_penalty_vgg.py's CAM network) and resnet8
(configs/default.py's 64 px model: ResNet-8, width 16, stem stride 2) are the
alternatives. --dtype auto is float32 on CPU and bfloat16 on GPU/TPU.

Where the time goes (skip with --no-breakdown): single-thread microseconds
per image of each stage on the same files -- file read, decode
(`folders.decode_image`, read included), resize/RGB (`transforms.to_rgb`),
augment (`transforms.random_crop_flip`), and the whole serial pipeline per
image (grain's shuffle, per-element seeding and statistics, the batch
stacking and the example dicts included -- printed as 'the rest'; no
threads, no device transfer). --threads-sweep 1,4 adds the pipeline at
other reader-thread counts, its rounds interleaved with the default's
(threads help only as far as the work releases Python's GIL).
--workers-sweep 2,4 adds the same stream produced by grain worker processes
(`dataset.num_workers`, one reader thread each).

Data: --data DIR (a tiny-imagenet-200 folder), or by default
../shared/data/tiny-imagenet-200.tar.gz unpacked once into --cache
(~/.cache/camjax/bench/tiny-imagenet-200). Without either the script says so
and exits 0.

  python bench/pipeline_throughput.py                    # ResNet-18 64 px, default threads
  python bench/pipeline_throughput.py --model resnet8 --threads-sweep 1,4 --workers-sweep 2
  python bench/pipeline_throughput.py --no-step          # the pipeline only
"""

import argparse
import copy
import math
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_step  # noqa: E402
import jpeg_decoders  # noqa: E402  (the Tiny ImageNet archive, unpacked once)

from camjax import parallel  # noqa: E402
from camjax.config.schema import base_config  # noqa: E402
from camjax.data import TrainBatches, open_splits  # noqa: E402
from camjax.data.folders import decode_image  # noqa: E402
from camjax.data.pipeline import train_dataset  # noqa: E402
from camjax.data.transforms import random_crop_flip, to_rgb  # noqa: E402

# --model: (registry name, model fields) of the step
MODELS = {'resnet18': ('resnet18_imagenet', {}),
          'vgg16_gap': ('vgg16_gap', {}),
          'resnet8': ('resnet8', {'width': 16, 'stem_stride': 2})}
NUM_CLASSES = 200
IMAGE_SIZE = 64


# =============================================================================
# Timing
# =============================================================================
def step_rounds(run, *, rounds: int, min_round_s: float, batch: int) -> dict:
    """Median images/s of `rounds` rounds of run(n) -> seconds (blocking once
    at the end), n chosen from a first call of one step so that a round takes
    about min_round_s."""
    first = run(1)
    n = max(1, math.ceil(min_round_s / max(first, 1e-9)))
    rates = [n * batch / run(n) for _ in range(rounds)]
    return {'median': float(np.median(rates)), 'min': min(rates), 'max': max(rates),
            'rounds': rounds, 'per_round': n}


def pipeline_rates(splits, cfg, *, variants: list[tuple[str, int]], batch: int, sharding,
                   args) -> dict:
    """{(kind, n): images/s} of global batches onto the devices: ('threads',
    n) is TrainBatches with n reader threads, ('workers', n) TrainBatches with
    dataset.num_workers = n worker processes of one reader thread each.
    One pipeline per variant, their rounds interleaved (a shared machine's
    load then falls on all alike). Before each round the pipeline's buffers
    are drained, so that the round measures what it produces, not what it
    stored while another was timed; a round takes batches for --min-round-s
    and counts them."""
    pipelines = {}
    for kind, n in variants:
        variant = copy.deepcopy(cfg)
        variant.num_threads, variant.num_workers = (n, 0) if kind == 'threads' else (1, n)
        pipelines[kind, n] = TrainBatches(splits.train, cfg=variant, global_batch=batch,
                                          seed=0, sharding=sharding)
        next(pipelines[kind, n])  # threads or processes started
    rates = {v: [] for v in pipelines}
    counts = {v: [] for v in pipelines}
    for _ in range(args.rounds):
        for (kind, n), batches in pipelines.items():
            # What it can hold: the prefetch buffer and the batches in the
            # readers' hands, or per worker process its read-ahead, queue and
            # interleave slot.
            held = cfg.prefetch + n if kind == 'threads' else n * (3 * cfg.prefetch + 1)
            for _ in range(held + 2):
                next(batches)
            t0, taken = time.perf_counter(), 0
            while taken == 0 or time.perf_counter() - t0 < args.min_round_s:
                last = next(batches)
                taken += 1
            jax.block_until_ready(last)
            rates[kind, n].append(taken * batch / (time.perf_counter() - t0))
            counts[kind, n].append(taken)
    for batches in pipelines.values():
        batches.close()
    return {v: {'median': float(np.median(r)), 'min': min(r), 'max': max(r),
                'rounds': args.rounds, 'per_round': f'{min(counts[v])}-{max(counts[v])}'}
            for v, r in rates.items()}


def step_rate(args, batch: int) -> tuple[dict, float, str]:
    name, fields = MODELS[args.model]
    dtype = args.dtype
    if dtype == 'auto':
        dtype = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
    config = cli_step.bench_config(model=name, image_size=IMAGE_SIZE, batch_size=batch,
                                   dtype=dtype, **fields)
    cli = cli_step.build(config, num_classes=NUM_CLASSES)
    batches = cli.synthetic_batches(2)
    compile_s = cli_step.compile_step(cli, batches[0])
    stepper = cli_step.Stepper(cli, batches)
    stepper.run(1)  # warm-up
    what = (f'{name}{"" if not fields else " " + str(fields)} {IMAGE_SIZE}x{IMAGE_SIZE} {dtype}, '
            f'{NUM_CLASSES} classes, global batch {batch}, CE + SGD, over '
            f'{cli.mesh.devices.size} device(s)')
    return (step_rounds(stepper.run, rounds=args.rounds, min_round_s=args.min_round_s,
                        batch=batch), compile_s, what)


def per_image_us(fn, items, repeat: int = 2) -> float:
    best = float('inf')
    for _ in range(repeat):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - t0)
    return best / len(items) * 1e6


def breakdown(root: str, splits, cfg, *, images: int) -> list[tuple[str, float]]:
    """Single-thread microseconds per image of each stage: the stages on
    `images` files spread over the set, the whole pipeline on as many."""
    paths = jpeg_decoders.sample(jpeg_decoders.tiny_imagenet_files(root), images)
    decode_image(paths[0])

    def read(path):
        with open(path, 'rb') as f:
            return f.read()

    decoded = [decode_image(p) for p in paths]
    rgb = [to_rgb(x, cfg.image_size) for x in decoded]
    rngs = [np.random.default_rng(i) for i in range(len(rgb))]
    dataset = train_dataset(splits.train.full, cfg=cfg, global_batch=64, seed=0)
    n_batches = max(1, images // 64)
    dataset[0]
    rows = [('file read (open + read)', per_image_us(read, paths)),
            ('decode (decode_image, read included)', per_image_us(decode_image, paths)),
            (f'to RGB / resize to {cfg.image_size}',
             per_image_us(lambda x: to_rgb(x, cfg.image_size), decoded)),
            ('augment (random_crop_flip)',
             per_image_us(lambda i: random_crop_flip(rgb[i], rngs[i], padding=cfg.crop_padding,
                                                     flip=cfg.random_flip), range(len(rgb)))),
            ('whole serial pipeline (batches of 64)',
             per_image_us(lambda g: dataset[g], range(1, n_batches + 1)) / 64)]
    return rows


def fmt(r: dict) -> str:
    return (f'{r["median"]:9.1f} img/s (median of {r["rounds"]} rounds of {r["per_round"]} '
            f'batches; min-max {r["min"]:.1f}-{r["max"]:.1f})')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='resnet18', choices=sorted(MODELS))
    p.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16'])
    p.add_argument('--batch', type=int, default=128, help='global batch')
    p.add_argument('--num-threads', type=int, default=None,
                   help='dataset.num_threads (default: the schema default)')
    p.add_argument('--prefetch', type=int, default=None,
                   help='dataset.prefetch (default: the schema default)')
    p.add_argument('--threads-sweep', default='',
                   help='further reader-thread counts to time the pipeline at, e.g. 1,2,4')
    p.add_argument('--workers-sweep', default='',
                   help='also time grain worker processes (mp_prefetch) producing the same '
                        'stream, e.g. 2,4: not camjax\'s pipeline yet')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--min-round-s', type=float, default=2.0,
                   help='each timed round runs about this long (at least one step / batch)')
    p.add_argument('--goal', type=float, default=1.5, help='pipeline / step goal')
    p.add_argument('--no-step', action='store_true', help='time the pipeline only')
    p.add_argument('--no-breakdown', action='store_true', help='skip the per-stage timings')
    p.add_argument('--breakdown-images', type=int, default=1024)
    p.add_argument('--data', help='a tiny-imagenet-200 folder; default: the archive, unpacked')
    p.add_argument('--archive', default=jpeg_decoders.ARCHIVE)
    p.add_argument('--cache', default=jpeg_decoders.DEFAULT_CACHE,
                   help='where the archive is unpacked')
    args = p.parse_args(argv)

    root = jpeg_decoders.tiny_imagenet_dir(args)
    if root is None:
        return None
    config = base_config()
    cfg = config.dataset
    cfg.name, cfg.image_size = f'tinyimagenet:{root}', IMAGE_SIZE
    if args.num_threads is not None:
        cfg.num_threads = args.num_threads
    if args.prefetch is not None:
        cfg.prefetch = args.prefetch
    default = base_config().dataset
    try:
        import simplejpeg
        decoder = f'simplejpeg {simplejpeg.__version__} for JPEGs, PIL otherwise'
    except ImportError:
        decoder = 'PIL (simplejpeg not installed)'
    print(f'device: {cli_step.device_label()}, jax {jax.__version__}, {os.cpu_count()} CPUs; '
          f'decoder: {decoder}', flush=True)
    t0 = time.perf_counter()
    splits = open_splits(cfg)
    print(f'opened {cfg.name}: {splits.sizes["train"]} train images, {splits.num_classes} '
          f'classes, in {time.perf_counter() - t0:.1f} s', flush=True)
    sharding = parallel.batch_sharded(parallel.make_mesh())

    if not args.no_breakdown:
        rows = breakdown(root, splits, cfg, images=args.breakdown_images)
        whole = rows[-1][1]
        print(f'\nsingle thread, {args.breakdown_images} images, microseconds per image:')
        for what, us in rows:
            print(f'  {what:40s} {us:8.1f} us  {100 * us / whole:5.1f}%  '
                  f'({1e6 / us:9.0f} img/s)')
        rest = whole - sum(us for _, us in rows[1:4])
        print(f'  {"the rest (grain: shuffle, seeding, stats,":40s} {rest:8.1f} us  '
              f'{100 * rest / whole:5.1f}%\n  {" batch stacking; example dicts)":40s}',
              flush=True)

    threads = [cfg.num_threads] + [int(t) for t in args.threads_sweep.split(',') if t
                                   and int(t) != cfg.num_threads]
    variants = [('threads', n) for n in threads]
    variants += [('workers', int(w)) for w in args.workers_sweep.split(',') if w]
    pipe = pipeline_rates(splits, cfg, variants=variants, batch=args.batch, sharding=sharding,
                          args=args)
    labels = {}
    for kind, n in variants:
        if kind == 'threads':
            labels[kind, n] = (f'{n} reader thread(s)'
                               f'{" (the default)" if n == default.num_threads else ""}')
        else:
            labels[kind, n] = f'{n} worker process(es) (dataset.num_workers)'
    print(f'\npipeline, prefetch {cfg.prefetch}, batch {args.batch}:')
    width = max(len(label) for label in labels.values())
    for v in variants:
        print(f'  {labels[v]:{width}s} {fmt(pipe[v])}', flush=True)
    main_rate = pipe['threads', threads[0]]['median']
    if args.no_step:
        return {'pipeline': main_rate}

    step, compile_s, what = step_rate(args, args.batch)
    print(f'\nstep: {what}; compiled in {compile_s:.1f} s (excluded)\nstep: {fmt(step)}',
          flush=True)
    ratio = main_rate / step['median']
    verdict = 'MET' if ratio >= args.goal else 'NOT MET'
    print(f'\npipeline img/s  {main_rate:10.1f}  ({labels["threads", threads[0]]})'
          f'\nstep img/s      {step["median"]:10.1f}  ({args.model})'
          f'\npipeline / step {ratio:10.2f}x  goal >= {args.goal:.1f}x: {verdict}')
    for v in variants[1:]:
        print(f'  with {labels[v]}: {pipe[v]["median"] / step["median"]:.2f}x')
    return {'pipeline': main_rate, 'step': step['median'], 'ratio': ratio}

if __name__ == '__main__':
    main()
