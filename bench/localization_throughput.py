"""CAM localization cost of mode=eval: camjax's component-tree sweep vs a
per-image, per-threshold scipy.ndimage loop, on eval's own code path, measured
side by side in one run.

Every variant runs `evaluate.localization_metrics`, the function mode=eval
calls, on the same --num CAMs. Per chunk of images it normalizes the CAMs
(camjax's `normalize_cams` in every variant) and calls `sweep_ious` for three
IoUs per image: the largest component's at tau = theta * max (top-1 / GT-known
loc), and, per CAM threshold, the largest component's (MaxBoxAcc) and the best
component's (MaxBoxAccV2); then it reduces them. The variants differ only in
what stands behind that `sweep_ious` call:
  camjax    eval as it is: one component tree per chunk, tau among the
            thresholds;
  2 trees   camjax before: tau's largest component from a tree of its own
            (`largest_component_box(masks=cam >= tau)`), then one sweep for
            MaxBoxAcc and V2;
  3 trees   camjax before that: the tau tree, then one sweep per metric;
  scipy     the straightforward loop: for each image, at tau and at each
            threshold, `scipy.ndimage.label(mask, structure=np.ones((3, 3)))`,
            `find_objects`, the largest component by `bincount` and the best
            IoU of it and of any component with the gt boxes (one label per
            image and threshold serves both metrics).
All must return identical metrics (exit 1 otherwise).

Data: --num CAMs of --cam-size^2 (sums of 1-4 Gaussian blobs), which eval
upsamples to --size^2; gt boxes: one around the first blob (+-2 sigma) and 0-2
random ones. Thresholds 0, --step, ..., < 1; theta --theta.

Timing: one untimed warm-up call per variant (camjax's compiles), then
--repeats rounds, each timing every variant once (interleaved, so background
load hits all alike). images/s = --num / the median of a variant's --repeats
times, the same statistic for every variant. Verdict: camjax >= 10 x the scipy
loop (PASS/MISS).

  python bench/localization_throughput.py            # 2,000 CAMs 16->64 px, 100 thresholds
  python bench/localization_throughput.py --quick    # 200 CAMs, 3 rounds
"""

import argparse
import os
import statistics
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from camjax.evaluation import evaluate, localization  # noqa: E402

TARGET = 10.0  # camjax images/s over the scipy loop's
STRUCTURE = np.ones((3, 3), bool)  # 8-connectivity


def raw_cams(rng, n, cam_size, size):
    """(n, cam_size, cam_size) float32 feature-resolution CAMs, sums of 1-4
    Gaussian blobs placed in image-relative units, and (n, 4) the +-2 sigma box
    of the first blob in --size image pixels (clipped)."""
    centres = (np.arange(cam_size, dtype=np.float32) + 0.5) / cam_size
    yy, xx = centres[:, None], centres[None, :]
    cams = np.zeros((n, cam_size, cam_size), np.float32)
    blobs = rng.integers(1, 5, n)
    for k in range(4):
        on = (blobs > k).astype(np.float32)[:, None, None]
        cy, cx = (rng.uniform(0, 1, (n, 1, 1)) for _ in range(2))
        sigma = rng.uniform(0.05, 0.25, (n, 1, 1))
        amp = rng.uniform(0.3, 1.0, (n, 1, 1))
        cams += on * amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        if k == 0:
            first = np.stack([cx - 2 * sigma, cy - 2 * sigma, cx + 2 * sigma, cy + 2 * sigma])
            first = np.clip(np.round(first.reshape(4, n).T * size), 0, size - 1)
    return cams, first.astype(np.int32)


def gt_boxes(rng, first, size, max_boxes=3):
    """(n, max_boxes, 4) int32 inclusive gt boxes, as eval batches carry them:
    the first blob's box, then 0 to max_boxes - 1 random ones; rows of -1 pad."""
    n = len(first)
    boxes = np.full((n, max_boxes, 4), -1, np.int32)
    boxes[:, 0] = first
    count = rng.integers(1, max_boxes + 1, n)
    for j in range(1, max_boxes):
        x0, y0 = rng.integers(0, size - 1, (2, n))
        x1, y1 = rng.integers(x0, size), rng.integers(y0, size)
        boxes[:, j] = np.where((count > j)[:, None], np.stack([x0, y0, x1, y1], 1), -1)
    return boxes


# =============================================================================
# What stands behind eval's `sweep_ious` call in each variant.
# =============================================================================
def old_camjax(sweep, sweeps):
    """camjax before the single tree: tau's boxes from their own tree (as
    `fixed_threshold_loc` had them), then `sweeps` threshold sweeps."""
    def sweep_ious(*, cams, gt_boxes, thresholds, theta):
        tau = theta * jnp.max(cams, axis=(1, 2), keepdims=True)
        boxes = localization.largest_component_box(masks=cams >= tau)
        iou = localization.box_iou(a=boxes[:, None], b=jnp.asarray(gt_boxes, jnp.float32))
        swept = [sweep(cams=cams, gt_boxes=gt_boxes, thresholds=thresholds)
                 for _ in range(sweeps)]
        return {'fixed': np.asarray(jnp.max(iou, axis=-1)), 'largest': swept[0]['largest'],
                'any': swept[-1]['any']}
    return sweep_ious


def np_iou(a, b):
    """Inclusive-coordinate IoU, (..., 4) x (..., 4) float32; -1 boxes give 0."""
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0] + 1) * (x[..., 3] - x[..., 1] + 1)
    valid = (a[..., 0] >= 0) & (b[..., 0] >= 0)
    return np.where(valid, inter / np.maximum(area(a) + area(b) - inter, 1), 0.0)


def scipy_box_ious(mask, gt):
    """(largest component's IoU, best component's IoU) with the best gt box;
    0 for an empty mask."""
    labels, num = ndimage.label(mask, structure=STRUCTURE)
    if num == 0:
        return 0.0, 0.0
    boxes = np.array([[s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1]
                      for s in ndimage.find_objects(labels)], np.float32)
    ious = np_iou(boxes[:, None], gt[None]).max(axis=1)
    return ious[np.argmax(np.bincount(labels.ravel())[1:])], ious.max()


def scipy_sweep_ious(*, cams, gt_boxes, thresholds, theta):
    """The scipy loop, with `sweep_ious`'s arguments and results."""
    cams, gt = np.asarray(cams), np.asarray(gt_boxes, np.float32)
    thresholds = np.asarray(thresholds, np.float32)
    out = {'fixed': np.zeros(len(cams), np.float32),
           'largest': np.zeros((len(cams), len(thresholds)), np.float32),
           'any': np.zeros((len(cams), len(thresholds)), np.float32)}
    for i, cam in enumerate(cams):
        out['fixed'][i] = scipy_box_ious(cam >= np.float32(theta) * cam.max(), gt[i])[0]
        for k, thr in enumerate(thresholds):
            out['largest'][i, k], out['any'][i, k] = scipy_box_ious(cam >= thr, gt[i])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--num', type=int, default=2_000, help='CAMs per timed call (every variant)')
    p.add_argument('--cam-size', type=int, default=16, help='CAM (feature map) side')
    p.add_argument('--size', type=int, default=64, help='image side the CAMs are upsampled to')
    p.add_argument('--step', type=float, default=0.01, help='CAM threshold step')
    p.add_argument('--theta', type=float, default=0.2, help='tau = theta * max for top-1 loc')
    p.add_argument('--repeats', type=int, default=5, help='timed rounds (median kept)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true', help='smoke run: 200 CAMs, 3 rounds')
    args = p.parse_args()
    if args.quick:
        args.num, args.repeats = 200, 3

    rng = np.random.default_rng(args.seed)
    cams, first = raw_cams(rng, args.num, args.cam_size, args.size)
    gt = gt_boxes(rng, first, args.size)
    correct = rng.random(args.num) < 0.7
    num_t = len(np.arange(0.0, 1.0, args.step))
    print(f'{args.num} CAMs {args.cam_size}x{args.cam_size} -> {args.size}x{args.size}, '
          f'{num_t} thresholds, theta {args.theta}; {jax.default_backend()} '
          f'({os.cpu_count()} cores); median of {args.repeats} timed runs per variant after '
          f'1 warm-up, interleaved; target camjax >= {TARGET:.0f}x the scipy loop', flush=True)

    sweep = localization.sweep_ious
    variants = {'camjax': sweep, '2 trees': old_camjax(sweep, 1),
                '3 trees': old_camjax(sweep, 2), 'scipy': scipy_sweep_ious}

    def call(name):
        with mock.patch.object(localization, 'sweep_ious', variants[name]):
            t0 = time.perf_counter()
            result = evaluate.localization_metrics(
                cams=cams, gt_boxes=gt, correct=correct, image_size=args.size,
                theta=args.theta, threshold_step=args.step)
            return time.perf_counter() - t0, result

    warm, results = {}, {}
    for name in variants:
        warm[name], results[name] = call(name)
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name in variants:
            seconds, result = call(name)
            times[name].append(seconds)
            if result != results[name]:
                sys.exit(f'{name}: metrics changed between runs')
    median = {name: statistics.median(t) for name, t in times.items()}
    rate = {name: args.num / median[name] for name in variants}

    print(f'\n{"":10s} {"images/s":>10s} {"median s":>9s} {"min-max s":>13s} {"warm-up s":>9s}')
    for name in variants:
        print(f'{name:10s} {rate[name]:10.1f} {median[name]:9.3f} '
              f'{min(times[name]):6.3f}-{max(times[name]):6.3f} {warm[name]:9.2f}')
    ratio = rate['camjax'] / rate['scipy']
    print(f'\ncamjax / scipy loop: {ratio:.1f}x  target >= {TARGET:.0f}x  '
          f'{"PASS" if ratio >= TARGET else "MISS"}')
    for old in ('2 trees', '3 trees'):
        print(f'one tree per chunk vs {old}: {median[old] / median["camjax"]:.2f}x faster '
              f'({median[old]:.3f} s -> {median["camjax"]:.3f} s per call)')
    loc = results['camjax']
    same = all(result == loc for result in results.values())
    print(f'metrics (GT-known loc {loc["gt_known_loc"]:.4f}, top-1 loc {loc["top1_loc"]:.4f}, '
          f'MaxBoxAcc {loc["max_box_acc"]:.4f}, MaxBoxAccV2 {loc["max_box_acc_v2"]:.4f}) '
          f'identical in all variants: {"yes" if same else "NO"}', flush=True)
    if not same:
        sys.exit(1)


if __name__ == '__main__':
    main()
