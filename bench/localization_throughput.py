"""MaxBoxAcc throughput: camjax's vectorized threshold sweep vs a per-image,
per-threshold scipy.ndimage loop, measured in the same run on CPU.

Data: --num random smooth CAMs (sums of 1-4 Gaussian blobs, min-max normalized)
of --size x --size pixels; gt boxes: one around the first blob (+-2 sigma) and
0-2 random ones. Swept over --thresholds CAM thresholds (0, 1/T, ..., (T-1)/T).

camjax: `localization.max_box_acc` (MaxBoxAcc, largest component) and
`max_box_acc_v2` (all components, IoU 0.3/0.5/0.7). The first call compiles
every kernel shape the data needs and is reported separately; the steady-state
time is the best of --repeats further calls.

Reference: the straightforward loop, for each image and threshold
`scipy.ndimage.label(cam >= thr, structure=np.ones((3, 3)))`, `find_objects`,
the largest component by `bincount` (or all boxes for V2) and the best IoU with
the gt boxes. It is timed on the first --ref-num images and scaled to images/s;
its accuracy curves on that subset must equal camjax's exactly.

Verdict: camjax images/s >= 10 x the scipy loop's, for MaxBoxAcc (PASS/MISS).

  python bench/localization_throughput.py            # 10,000 CAMs 64x64, 100 thresholds
  python bench/localization_throughput.py --quick    # 1,000 CAMs, reference on 100
"""

import argparse
import os
import sys
import time

import jax
import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from camjax.evaluation import localization  # noqa: E402

TARGET = 10.0  # camjax images/s over the scipy loop's


def smooth_cams(rng, n, size):
    """(n, size, size) float32 sums of 1-4 Gaussian blobs, min-max normalized,
    and (n, 4) the box of +-2 sigma around the first blob (clipped)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cams = np.zeros((n, size, size), np.float32)
    blobs = rng.integers(1, 5, n)
    for k in range(4):
        on = (blobs > k).astype(np.float32)[:, None, None]
        cy, cx = (rng.uniform(0, size, (n, 1, 1)) for _ in range(2))
        sigma = rng.uniform(0.05, 0.25, (n, 1, 1)) * size
        amp = rng.uniform(0.3, 1.0, (n, 1, 1))
        cams += on * amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        if k == 0:
            first = np.stack([cx - 2 * sigma, cy - 2 * sigma, cx + 2 * sigma, cy + 2 * sigma])
            first = np.clip(np.round(first.reshape(4, n).T), 0, size - 1)
    lo, hi = cams.min(axis=(1, 2), keepdims=True), cams.max(axis=(1, 2), keepdims=True)
    return ((cams - lo) / (hi - lo)).astype(np.float32), first.astype(np.float32)


def gt_boxes(rng, first, size, max_boxes=3):
    """(n, max_boxes, 4) inclusive gt boxes: the first blob's box, then 0 to
    max_boxes - 1 random ones; rows of -1 pad."""
    n = len(first)
    boxes = np.full((n, max_boxes, 4), -1, np.float32)
    boxes[:, 0] = first
    count = rng.integers(1, max_boxes + 1, n)
    for j in range(1, max_boxes):
        x0, y0 = rng.integers(0, size - 1, (2, n))
        x1, y1 = rng.integers(x0, size), rng.integers(y0, size)
        boxes[:, j] = np.where((count > j)[:, None], np.stack([x0, y0, x1, y1], 1), -1)
    return boxes


def np_iou(a, b):
    """Inclusive-coordinate IoU, (..., 4) x (..., 4); empty or -1 boxes give 0."""
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0] + 1) * (x[..., 3] - x[..., 1] + 1)
    valid = (a[..., 0] >= 0) & (b[..., 0] >= 0)
    return np.where(valid, inter / np.maximum(area(a) + area(b) - inter, 1), 0.0)


def scipy_ious(cams, gt_boxes, thresholds, multi_contour):
    """The reference loop: (N, T) best IoU per image and threshold."""
    structure = np.ones((3, 3), bool)
    out = np.zeros((len(cams), len(thresholds)), np.float32)
    for i, cam in enumerate(cams):
        for k, thr in enumerate(thresholds):
            labels, num = ndimage.label(cam >= thr, structure=structure)
            if num == 0:
                continue
            boxes = np.array([[s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1]
                              for s in ndimage.find_objects(labels)], np.float32)
            if not multi_contour:
                boxes = boxes[[np.argmax(np.bincount(labels.ravel())[1:])]]
            out[i, k] = np_iou(boxes[:, None], gt_boxes[i][None]).max()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--num', type=int, default=10_000, help='CAMs timed with camjax')
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--thresholds', type=int, default=100)
    p.add_argument('--ref-num', type=int, default=500, help='CAMs timed with the scipy loop')
    p.add_argument('--repeats', type=int, default=2, help='timed camjax calls (best is kept)')
    p.add_argument('--chunk-size', type=int, default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true', help='smoke run: 1,000 CAMs, reference on 100')
    args = p.parse_args()
    if args.quick:
        args.num, args.ref_num, args.repeats = 1_000, 100, 1
    args.ref_num = min(args.ref_num, args.num)

    rng = np.random.default_rng(args.seed)
    cams, first = smooth_cams(rng, args.num, args.size)
    gt = gt_boxes(rng, first, args.size)
    thresholds = np.arange(args.thresholds, dtype=np.float32) / args.thresholds
    print(f'{args.num} CAMs {args.size}x{args.size}, {args.thresholds} thresholds, '
          f'{jax.default_backend()} ({os.cpu_count()} cores); scipy loop on {args.ref_num}; '
          f'target camjax >= {TARGET:.0f}x the scipy loop (MaxBoxAcc)', flush=True)

    variants = {'MaxBoxAcc': dict(fn=localization.max_box_acc, multi_contour=False),
                'MaxBoxAccV2': dict(fn=localization.max_box_acc_v2, multi_contour=True)}
    for name, v in variants.items():
        call = lambda n, fn=v['fn']: fn(cams=cams[:n], gt_boxes=gt[:n], thresholds=thresholds,
                                        chunk_size=args.chunk_size)
        t0 = time.perf_counter()
        call(args.num)
        first_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = call(args.num)
            times.append(time.perf_counter() - t0)
        ours = args.num / min(times)

        t0 = time.perf_counter()
        ref = scipy_ious(cams[:args.ref_num], gt[:args.ref_num], thresholds, v['multi_contour'])
        theirs = args.ref_num / (time.perf_counter() - t0)
        ref_acc = localization.box_accuracy(ious=ref, thresholds=thresholds,
                                            iou_thresholds=result['iou_thresholds'])
        sub = call(args.ref_num)
        same = np.array_equal(sub['curve'], ref_acc['curve'])

        ratio = ours / theirs
        accs = ' '.join(f'{a:.4f}@{t:.1f}' for a, t in zip(result['box_acc'],
                                                            result['iou_thresholds'], strict=True))
        print(f'\n== {name}: box_acc {accs} (mean {result["box_acc_mean"]:.4f}) on {args.num}')
        print(f'   camjax    {ours:10.1f} images/s   (first call incl. compile {first_s:.1f} s, '
              f'then best of {args.repeats}: {min(times):.2f} s)')
        print(f'   scipy     {theirs:10.1f} images/s   ({args.ref_num} images)')
        verdict = f'   ratio {ratio:8.1f}x'
        if not v['multi_contour']:
            verdict += f'  target >= {TARGET:.0f}x  {"PASS" if ratio >= TARGET else "MISS"}'
        print(verdict)
        print(f'   same accuracy curve as scipy on the {args.ref_num} images: '
              f'{"yes" if same else "NO"}', flush=True)
        if not same:
            sys.exit(1)


if __name__ == '__main__':
    main()
