"""JPEG decoders side by side on Tiny ImageNet: decode-only images/s and the
largest pixel difference from PIL, on the same files, in one run.

Every decoder turns the same in-memory JPEG bytes into what camjax's
`folders.decode_image` returns -- uint8 RGB (H, W, 3) -- so file reads are
not timed:

  pil          Image.open(BytesIO(data)).convert('RGB') (camjax's decoder
               until now, and its fallback for every other format)
  simplejpeg   simplejpeg.decode_jpeg(data, colorspace='RGB')
  opencv       cv2.imdecode(..., IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION),
               BGR -> RGB
  turbojpeg    PyTurboJPEG's TurboJPEG().decode(data, TJPF_RGB); needs the
               system library libturbojpeg (>= 3.0 for PyTurboJPEG 2.x)
  camjax       camjax.data.folders.decode_image(path): the decoder camjax
               uses now, reading the file too (page-cached); for reference

Decoders that are not installed are reported as such, with why (pillow-simd
has no wheel, only a source distribution to compile). The rounds are
interleaved (each round runs every decoder over all the sampled files), and
each figure is the median of the rounds, with its ratio to PIL's. Then every
decoder runs on 1 and on --threads threads over the same files (a thread pool;
a decoder that holds Python's GIL does not scale).

Pixel agreement: max |decoder - PIL| over the sampled files (or all 110,000
train and val files with --diff-all), with the number of files that differ.

Data: --data DIR (a tiny-imagenet-200 folder), or by default
../shared/data/tiny-imagenet-200.tar.gz unpacked once into --cache
(~/.cache/camjax/bench/tiny-imagenet-200). Without either it says so and
exits 0.

  python bench/jpeg_decoders.py                        # 5,000 files, 5 rounds
  python bench/jpeg_decoders.py --files 20000 --diff-all
"""

import argparse
import concurrent.futures
import glob
import io
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import archives  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = os.path.join(ROOT, '..', 'shared', 'data', 'tiny-imagenet-200.tar.gz')
DEFAULT_CACHE = os.path.join('~', '.cache', 'camjax', 'bench')
FOLDER = 'tiny-imagenet-200'


# =============================================================================
# Data
# =============================================================================
def unpacked_tiny_imagenet(archive: str, cache: str) -> str:
    """`cache`/tiny-imagenet-200, holding `archive` unpacked (once)."""
    return archives.unpacked(archive, os.path.join(os.path.expanduser(cache), FOLDER),
                             inner=FOLDER, expect=('wnids.txt',))


def tiny_imagenet_dir(args) -> str | None:
    """The tiny-imagenet-200 folder from --data, or the archive unpacked
    into --cache; None (after saying why) when neither is there."""
    if args.data:
        return os.path.abspath(args.data)
    if not os.path.exists(args.archive):
        print(f'skipped: {os.path.normpath(args.archive)} is not present (no Tiny ImageNet; '
              'pass --data DIR, a tiny-imagenet-200 folder)')
        return None
    return unpacked_tiny_imagenet(args.archive, args.cache)


def tiny_imagenet_files(root: str) -> list[str]:
    """Every train and val JPEG, sorted."""
    files = glob.glob(os.path.join(root, 'train', '*', 'images', '*.JPEG'))
    files += glob.glob(os.path.join(root, 'val', 'images', '*.JPEG'))
    return sorted(files)


def sample(files: list[str], n: int) -> list[str]:
    """`n` files spread evenly over the sorted list (every class, and val)."""
    if n >= len(files):
        return list(files)
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


# =============================================================================
# Decoders: bytes -> uint8 RGB (H, W, 3)
# =============================================================================
def pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert('RGB'))


def decoders() -> tuple[dict, dict]:
    """({name: bytes -> RGB array}, {name: why it is unavailable})."""
    found, missing = {'pil': pil_decode}, {}
    try:
        import simplejpeg
        found['simplejpeg'] = lambda data: simplejpeg.decode_jpeg(data, colorspace='RGB')
    except ImportError:
        missing['simplejpeg'] = 'not installed (pip install simplejpeg)'
    try:
        import cv2
        cv2.setNumThreads(1)  # one image per call: no intra-image threads
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # as PIL: no EXIF rotation

        def opencv(data):
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
            if bgr is None:
                raise ValueError('cv2.imdecode failed')
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        found['opencv'] = opencv
    except ImportError:
        missing['opencv'] = 'not installed (pip install opencv-python-headless)'
    try:
        import turbojpeg
        jpeg = turbojpeg.TurboJPEG()
        found['turbojpeg'] = lambda data: jpeg.decode(data, pixel_format=turbojpeg.TJPF_RGB)
    except ImportError:
        missing['turbojpeg'] = ('not installed (pip install PyTurboJPEG; it also needs the '
                                'system library libturbojpeg, >= 3.0 for PyTurboJPEG 2.x)')
    except (OSError, RuntimeError) as e:  # the wheel is pure Python; the C library is not
        missing['turbojpeg'] = (f'PyTurboJPEG is installed but cannot load libturbojpeg: '
                                f'{str(e).splitlines()[0]}')
    try:
        import importlib.metadata
        importlib.metadata.version('pillow-simd')
        missing['pillow-simd'] = 'installed as PIL itself: the "pil" row is pillow-simd'
    except importlib.metadata.PackageNotFoundError:
        missing['pillow-simd'] = ('not installed: no wheel on the package index (source '
                                  'distribution only, needs compiling), and it replaces Pillow')
    return found, missing


# =============================================================================
# Measurements
# =============================================================================
def run_once(decode, items) -> float:
    t0 = time.perf_counter()
    for x in items:
        decode(x)
    return time.perf_counter() - t0


def run_threads(decode, items, threads: int) -> float:
    chunks = [items[i::threads] for i in range(threads)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda xs: run_once(decode, xs), chunks))
        return time.perf_counter() - t0


def pixel_diff(decode, files: list[str]) -> tuple[int, int, int]:
    """(max |decode - PIL| over the files, files that differ, files that
    failed to decode or gave another shape)."""
    worst = differ = failed = 0
    for path in files:
        with open(path, 'rb') as f:
            data = f.read()
        ref = pil_decode(data)
        try:
            out = decode(data)
        except Exception:  # noqa: BLE001 -- counted and reported
            failed += 1
            continue
        if out.shape != ref.shape:
            failed += 1
            continue
        d = int(np.abs(out.astype(np.int16) - ref.astype(np.int16)).max())
        worst, differ = max(worst, d), differ + (d > 0)
    return worst, differ, failed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--files', type=int, default=5000, help='JPEGs timed (spread over the set)')
    p.add_argument('--rounds', type=int, default=5, help='interleaved timed rounds')
    p.add_argument('--threads', type=int, default=os.cpu_count(),
                   help='threads of the scaling row (default: the CPU count)')
    p.add_argument('--diff-all', action='store_true',
                   help='pixel differences over every train and val file (default: the timed '
                        'files)')
    p.add_argument('--data', help='a tiny-imagenet-200 folder; default: the archive, unpacked')
    p.add_argument('--archive', default=ARCHIVE)
    p.add_argument('--cache', default=DEFAULT_CACHE, help='where the archive is unpacked')
    args = p.parse_args(argv)

    root = tiny_imagenet_dir(args)
    if root is None:
        return None
    every = tiny_imagenet_files(root)
    if not every:
        raise SystemExit(f'no Tiny ImageNet JPEGs under {root}')
    files = sample(every, args.files)
    blobs = []
    for path in files:
        with open(path, 'rb') as f:
            blobs.append(f.read())
    found, missing = decoders()
    sys.path.insert(0, ROOT)
    from camjax.data.folders import decode_image
    timed = {**found, 'camjax': decode_image}
    inputs = {name: (files if name == 'camjax' else blobs) for name in timed}
    print(f'{len(files)} Tiny ImageNet JPEGs of {len(every)} ({root}), decoded from memory '
          f'to uint8 RGB; {args.rounds} interleaved rounds; {os.cpu_count()} CPUs; '
          f'Pillow {Image.__version__}', flush=True)
    for name, why in missing.items():
        print(f'  {name}: {why}')

    for name, decode in timed.items():  # warm-up (imports, first-call set-up, page cache)
        run_once(decode, inputs[name][:200])
    seconds = {name: [] for name in timed}
    for _ in range(args.rounds):
        for name, decode in timed.items():
            seconds[name].append(run_once(decode, inputs[name]))
    rates = {name: [len(files) / s for s in v] for name, v in seconds.items()}
    med = {name: statistics.median(v) for name, v in rates.items()}

    threads = max(args.threads, 1)
    scaled = {}
    for name, decode in timed.items():
        one = min(run_threads(decode, inputs[name], 1) for _ in range(2))
        many = min(run_threads(decode, inputs[name], threads) for _ in range(2))
        scaled[name] = (len(files) / one, len(files) / many)

    diff_files = every if args.diff_all else files
    print(f'\n{"decoder":11s} {"img/s":>9s} {"min-max":>17s} {"vs PIL":>7s} '
          f'{"1 thread":>9s} {f"{threads} threads":>10s} {"scale":>6s}   max|diff| vs PIL '
          f'over {len(diff_files)} files')
    for name in timed:
        r = rates[name]
        one, many = scaled[name]
        if name == 'pil':
            agree = '0 (the reference)'
        elif name == 'camjax':
            agree = 'decode_image (file read included)'
        else:
            worst, differ, failed = pixel_diff(found[name], diff_files)
            agree = f'{worst} ({differ} files differ{f", {failed} failed" if failed else ""})'
        print(f'{name:11s} {med[name]:9.0f} {min(r):8.0f}-{max(r):<8.0f} '
              f'{med[name] / med["pil"]:6.2f}x {one:9.0f} {many:10.0f} {many / one:5.2f}x   '
              f'{agree}', flush=True)
    return med


if __name__ == '__main__':
    main()
