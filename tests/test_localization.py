"""camjax.evaluation.localization: IoU, component boxes, MaxBoxAcc / V2 and fixed-threshold
loc, checked by hand and against a scipy.ndimage reference loop; and eval's localization
(evaluate.localization_metrics), one component tree per chunk, against the same loop."""

import numpy as np
import pytest

from camjax.evaluation import evaluate
from camjax.evaluation import localization as loc

ndimage = pytest.importorskip('scipy.ndimage')
STRUCTURE = np.ones((3, 3), bool)  # 8-connectivity


# =============================================================================
# Reference: a per-image, per-threshold scipy loop.
# =============================================================================
def ref_iou(a, b):
    if min(a) < 0 or min(b) < 0:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    area = lambda x: (x[2] - x[0] + 1) * (x[3] - x[1] + 1)
    return iw * ih / (area(a) + area(b) - iw * ih)


def ref_components(mask):
    """scipy: (boxes in label order, areas)."""
    labels, num = ndimage.label(mask, structure=STRUCTURE)
    boxes = [(s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1)
             for s in ndimage.find_objects(labels)]
    return boxes, np.bincount(labels.ravel(), minlength=num + 1)[1:]


def ref_threshold_ious(cams, gt_boxes, thresholds, multi_contour):
    out = np.zeros((len(cams), len(thresholds)), np.float32)
    for i, cam in enumerate(cams):
        for k, thr in enumerate(np.asarray(thresholds, np.float32)):
            boxes, areas = ref_components(cam >= thr)
            if boxes:
                boxes = boxes if multi_contour else [boxes[int(np.argmax(areas))]]
                out[i, k] = max(ref_iou(b, g) for b in boxes for g in gt_boxes[i])
    return out


def ref_sweep_ious(*, cams, gt_boxes, thresholds, theta):
    """`loc.sweep_ious(theta=...)` by the scipy loop: 'fixed' at tau = theta * max."""
    cams, gt = np.asarray(cams), np.asarray(gt_boxes)
    tau = [[np.float32(theta) * cam.max()] for cam in cams]
    return {'largest': ref_threshold_ious(cams, gt, thresholds, False),
            'any': ref_threshold_ious(cams, gt, thresholds, True),
            'fixed': np.array([ref_threshold_ious(cams[i:i + 1], gt[i:i + 1], tau[i], False)[0, 0]
                               for i in range(len(cams))], np.float32)}


def smooth_cams(rng, n, size):
    """Sums of 1-4 Gaussian blobs, min-max normalized to [0, 1]."""
    yy, xx = np.mgrid[:size, :size]
    cams = np.zeros((n, size, size))
    for i in range(n):
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.uniform(0, size, 2)
            sigma = rng.uniform(0.05, 0.3) * size
            cams[i] += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2)
                                                     / (2 * sigma ** 2))
    lo, hi = cams.min(axis=(1, 2), keepdims=True), cams.max(axis=(1, 2), keepdims=True)
    return ((cams - lo) / (hi - lo)).astype(np.float32)


def random_boxes(rng, n, size, max_boxes=3):
    boxes = np.full((n, max_boxes, 4), -1, np.float32)
    for i in range(n):
        for j in range(rng.integers(1, max_boxes + 1)):
            x0, y0 = rng.integers(0, size - 2, 2)
            boxes[i, j] = x0, y0, rng.integers(x0, size), rng.integers(y0, size)
    return boxes


def boxes_around(rng, cams, max_boxes=3):
    """Gt boxes a CAM half hits: first the box around all of cam >= a random
    level of its range, each side moved by up to 2 px; then 0-2 random boxes."""
    n, h, w = cams.shape
    boxes = random_boxes(rng, n, min(h, w), max_boxes)
    for i, cam in enumerate(cams):
        lo, hi = np.nanmin(cam), np.nanmax(cam)
        ys, xs = np.nonzero(cam >= lo + rng.uniform(0.3, 0.8) * (hi - lo))
        x0, y0, x1, y1 = np.array([xs.min(), ys.min(), xs.max(), ys.max()]) \
            + rng.integers(-2, 3, 4)
        boxes[i, 0] = (max(min(x0, x1), 0), max(min(y0, y1), 0), min(max(x0, x1), w - 1),
                       min(max(y0, y1), h - 1))
    return boxes


# =============================================================================
# IoU.
# =============================================================================
def test_box_iou_inclusive_coordinates():
    iou = lambda a, b: float(loc.box_iou(a=np.array(a), b=np.array(b)))
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 1.0             # one pixel, area 1
    assert iou([0, 0, 1, 1], [1, 1, 2, 2]) == pytest.approx(1 / 7)  # 4 + 4 - 1
    assert iou([0, 0, 3, 1], [0, 0, 1, 1]) == pytest.approx(4 / 8)
    assert iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0             # touching corners: disjoint
    assert iou([2, 3, 5, 9], [2, 3, 5, 9]) == 1.0
    assert iou([-1, -1, -1, -1], [0, 0, 5, 5]) == 0.0         # gt padding row
    assert iou([-1, -1, -1, -1], [-1, -1, -1, -1]) == 0.0     # empty vs padding: 0, not NaN
    assert iou([3, 3, 2, 2], [0, 0, 5, 5]) == 0.0             # x1 < x0: empty


def test_box_iou_broadcasts():
    a = np.array([[0, 0, 3, 3], [0, 0, 1, 1]])                # (2, 4)
    b = np.array([[[0, 0, 3, 3]], [[2, 2, 3, 3]]])            # (2, 1, 4)
    out = np.asarray(loc.box_iou(a=a, b=b))
    np.testing.assert_allclose(out, [[1.0, 0.25], [0.25, 0.0]])


# =============================================================================
# Components of masks.
# =============================================================================
def draw(*rows):
    return np.array([[ch == '#' for ch in row] for row in rows])


DIAGONAL = draw('#....',
                '.#...',
                '..#..',
                '...#.',
                '....#')
TWO = draw('##...',
           '##..#',
           '....#',
           '.....',
           '.....')
TIE = draw('#...#',
           '#...#',
           '.....',
           '..#..',
           '.....')
EMPTY = draw('.....', '.....', '.....', '.....', '.....')


def test_components_by_hand():
    masks = np.stack([DIAGONAL, TWO, TIE, EMPTY])
    labels, num = loc.label_components(masks=masks)
    np.testing.assert_array_equal(num, [1, 2, 3, 0])          # the diagonal chain is one
    np.testing.assert_array_equal(np.asarray(labels[1]), [[1, 1, 0, 0, 0],
                                                          [1, 1, 0, 0, 2],
                                                          [0, 0, 0, 0, 2],
                                                          [0, 0, 0, 0, 0],
                                                          [0, 0, 0, 0, 0]])
    boxes, areas = loc.component_boxes(masks=masks)
    np.testing.assert_array_equal(boxes[0], [[0, 0, 4, 4], [-1] * 4, [-1] * 4])
    np.testing.assert_array_equal(areas[0], [5, 0, 0])
    np.testing.assert_array_equal(boxes[1, :2], [[0, 0, 1, 1], [4, 1, 4, 2]])
    np.testing.assert_array_equal(areas[1], [4, 2, 0])
    np.testing.assert_array_equal(boxes[3], -np.ones((3, 4)))
    largest = np.asarray(loc.largest_component_box(masks=masks))
    np.testing.assert_array_equal(largest, [[0, 0, 4, 4],     # diagonal: one 5x5 box
                                            [0, 0, 1, 1],     # the 4-pixel square wins
                                            [0, 0, 0, 1],     # tie 2 vs 2: first in raster
                                            [-1, -1, -1, -1]])  # nothing: empty box
    assert float(loc.box_iou(a=largest[3], b=np.array([0, 0, 4, 4]))) == 0.0


def test_components_match_scipy():
    rng = np.random.default_rng(0)
    masks = np.concatenate([rng.random((12, 13, 17)) < p for p in (0.3, 0.5, 0.7)])
    labels, num = loc.label_components(masks=masks)
    boxes, areas = loc.component_boxes(masks=masks)
    largest = np.asarray(loc.largest_component_box(masks=masks))
    for i, mask in enumerate(masks):
        ref_labels, ref_num = ndimage.label(mask, structure=STRUCTURE)
        np.testing.assert_array_equal(labels[i], ref_labels)  # same numbering as scipy
        assert num[i] == ref_num
        ref_boxes, ref_areas = ref_components(mask)
        np.testing.assert_array_equal(boxes[i, :ref_num], ref_boxes)
        np.testing.assert_array_equal(areas[i, :ref_num], ref_areas)
        np.testing.assert_array_equal(largest[i], ref_boxes[int(np.argmax(ref_areas))])


def test_component_boxes_max_components_pads_and_truncates():
    masks = np.stack([TWO, TIE])
    boxes, areas = loc.component_boxes(masks=masks, max_components=2)
    np.testing.assert_array_equal(areas, [[4, 2], [2, 2]])    # TIE's third one dropped
    boxes, _ = loc.component_boxes(masks=masks, max_components=5)
    assert boxes.shape == (2, 5, 4) and np.all(np.asarray(boxes[:, 3:]) == -1)


# =============================================================================
# Threshold sweeps.
# =============================================================================
def test_levels_both_paths_match_numpy():
    rng = np.random.default_rng(1)
    cams = rng.random((3, 6, 7)).astype(np.float32)
    for num_t in (50, 200):  # unrolled compares / binary search
        thr = rng.random(num_t).astype(np.float32)
        thr[3] = cams[0, 0, 0]  # an exact tie counts as >=
        thr = np.sort(thr)
        level = np.asarray(loc._levels(cams, thr))
        np.testing.assert_array_equal(level, np.sum(cams[..., None] >= thr, axis=-1))
        rows = np.sort(rng.random((3, num_t)).astype(np.float32), axis=1)  # per image
        level = np.asarray(loc._levels(cams, rows))
        np.testing.assert_array_equal(level, np.sum(cams[..., None] >= rows[:, None, None], -1))


def test_max_box_acc_by_hand():
    """8x8 maps, thresholds 0.2 / 0.6.
    A: a 4x4 plateau at 0.5 and a 2x2 one at 0.9 (the gt). At 0.2 the largest
       component is the wrong 4x4 one (V1 miss) but V2 also sees the 2x2 box
       (IoU 1); at 0.6 only the 2x2 one is left.
    B: a 4x4 plateau at 0.4, gt one row taller (IoU 16/20 = 0.8); at 0.6 the
       mask is empty (IoU 0)."""
    cams = np.zeros((2, 8, 8), np.float32)
    cams[0, 0:4, 0:4], cams[0, 6:8, 6:8] = 0.5, 0.9
    cams[1, 2:6, 2:6] = 0.4
    gt = np.array([[[6, 6, 7, 7], [-1, -1, -1, -1]],
                   [[2, 2, 5, 6], [-1, -1, -1, -1]]], np.float32)
    thr = np.array([0.2, 0.6])
    v1 = loc.threshold_ious(cams=cams, gt_boxes=gt, thresholds=thr)
    v2 = loc.threshold_ious(cams=cams, gt_boxes=gt, thresholds=thr, multi_contour=True)
    np.testing.assert_allclose(v1, [[0.0, 1.0], [0.8, 0.0]])
    np.testing.assert_allclose(v2, [[1.0, 1.0], [0.8, 0.0]])

    acc = loc.max_box_acc(cams=cams, gt_boxes=gt, thresholds=thr, iou_thresholds=(0.5, 0.9))
    np.testing.assert_allclose(acc['curve'], [[0.5, 0.5], [0.0, 0.5]])
    np.testing.assert_allclose(acc['box_acc'], [0.5, 0.5])
    np.testing.assert_allclose(acc['best_threshold'], [0.2, 0.6])  # lowest on ties
    assert acc['box_acc_mean'] == pytest.approx(0.5)
    acc2 = loc.max_box_acc_v2(cams=cams, gt_boxes=gt, thresholds=thr,
                              iou_thresholds=(0.5, 0.9))
    np.testing.assert_allclose(acc2['curve'], [[1.0, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(acc2['box_acc'], [1.0, 0.5])
    np.testing.assert_allclose(acc2['best_threshold'], [0.2, 0.2])
    assert acc2['box_acc_mean'] == pytest.approx(0.75)


def test_foreground_is_greater_or_equal():
    cams = np.zeros((1, 6, 6), np.float32)
    cams[0, 1:3, 1:3] = 0.5                                  # exactly at the threshold
    gt = np.array([[[1, 1, 2, 2]]], np.float32)
    np.testing.assert_allclose(loc.threshold_ious(cams=cams, gt_boxes=gt,
                                                  thresholds=[0.5, 0.50001]), [[1.0, 0.0]])


@pytest.fixture(scope='module')
def random_case():
    rng = np.random.default_rng(2)
    cams, gt = smooth_cams(rng, 200, 32), random_boxes(rng, 200, 32)
    thresholds = np.linspace(0.0, 0.95, 20)
    return cams, gt, thresholds


@pytest.mark.parametrize('multi_contour', [False, True])
def test_sweep_matches_scipy_loop(random_case, multi_contour):
    cams, gt, thresholds = random_case
    ref = ref_threshold_ious(cams, gt, thresholds, multi_contour)
    ious = loc.threshold_ious(cams=cams, gt_boxes=gt, thresholds=thresholds,
                              multi_contour=multi_contour)
    np.testing.assert_allclose(ious, ref, rtol=1e-6, atol=0)
    assert 0.1 < np.mean(ref > 0) < 0.9                    # the case is not degenerate
    fn = loc.max_box_acc_v2 if multi_contour else loc.max_box_acc
    acc = fn(cams=cams, gt_boxes=gt, thresholds=thresholds)
    ref_acc = loc.box_accuracy(ious=ref, thresholds=thresholds,
                               iou_thresholds=acc['iou_thresholds'])
    np.testing.assert_array_equal(acc['curve'], ref_acc['curve'])
    np.testing.assert_array_equal(acc['box_acc'], ref_acc['box_acc'])
    assert len(acc['box_acc']) == (3 if multi_contour else 1)


def test_sweep_chunks_and_threshold_order(random_case):
    cams, gt, thresholds = random_case
    whole = loc.sweep_ious(cams=cams, gt_boxes=gt, thresholds=thresholds)
    np.testing.assert_array_equal(whole['largest'], loc.threshold_ious(
        cams=cams, gt_boxes=gt, thresholds=thresholds))
    perm = np.random.default_rng(3).permutation(len(thresholds))
    chunked = loc.sweep_ious(cams=cams, gt_boxes=gt, thresholds=thresholds[perm],
                             chunk_size=64)                # 4 chunks, the last one padded
    for kind in ('largest', 'any'):
        np.testing.assert_array_equal(chunked[kind], whole[kind][:, perm])


@pytest.mark.parametrize('merge', ['dense', 'sparse'])
def test_sweep_on_noise_matches_scipy(monkeypatch, merge):
    """Many tiny components: tables grow past their default sizes, and both
    merge loops (flat root table / union-find pointers) give scipy's answer."""
    monkeypatch.setattr(loc, '_DENSE_MERGE_MAX', 1 << 20 if merge == 'dense' else 0)
    rng = np.random.default_rng(4)
    cams = rng.random((6, 16, 16)).astype(np.float32)
    gt = random_boxes(rng, 6, 16)
    thresholds = np.linspace(0.05, 0.95, 10)
    for multi_contour in (False, True):
        np.testing.assert_allclose(
            loc.threshold_ious(cams=cams, gt_boxes=gt, thresholds=thresholds,
                               multi_contour=multi_contour),
            ref_threshold_ious(cams, gt, thresholds, multi_contour), rtol=1e-6, atol=0)
    masks = cams > 0.4
    labels, _ = loc.label_components(masks=masks)
    for mask, lab in zip(masks, np.asarray(labels), strict=True):
        np.testing.assert_array_equal(lab, ndimage.label(mask, structure=STRUCTURE)[0])


def test_sweep_on_resized_relu_cams_matches_scipy():
    """The real pipeline: 7x7 ReLU'd CAMs, bilinearly upsampled (zero plateaus,
    rounding ripples), normalized, then swept."""
    rng = np.random.default_rng(7)
    cams = np.asarray(loc.normalize_cams(cams=np.maximum(rng.normal(size=(16, 7, 7)), 0),
                                         size=(48, 48)))
    gt = random_boxes(rng, 16, 48)
    thresholds = np.linspace(0.0, 0.95, 20)
    for multi_contour in (False, True):
        np.testing.assert_allclose(
            loc.threshold_ious(cams=cams, gt_boxes=gt, thresholds=thresholds,
                               multi_contour=multi_contour),
            ref_threshold_ious(cams, gt, thresholds, multi_contour), rtol=1e-6, atol=0)


def test_sweep_separates_values_one_ulp_apart():
    """Pixels are ordered inside a level by a rounded value; rows at thr and
    one float below it must still fall on the two sides of thr."""
    thr = np.float32(0.3)
    below = np.nextafter(thr, np.float32(0))
    cams = np.where(np.arange(7)[:, None] % 2 == 0, thr, below) * np.ones((1, 7, 9), np.float32)
    gt = np.array([[[0, 2, 8, 2], [0, 4, 8, 4]]], np.float32)  # two of the four rows at thr
    ious = loc.threshold_ious(cams=cams, gt_boxes=gt, thresholds=[0.1, thr], multi_contour=True)
    np.testing.assert_allclose(ious, [[9 / 63, 1.0]])  # at 0.1 one 9x7 box: IoU 9/63
    largest = loc.threshold_ious(cams=cams, gt_boxes=gt, thresholds=[thr])
    np.testing.assert_allclose(largest, [[0.0]])       # four 1-row ties: row 0 is boxed


def test_perfect_cam_localizes_everything():
    rng = np.random.default_rng(5)
    gt = random_boxes(rng, 20, 32, max_boxes=1)
    cams = np.zeros((20, 32, 32), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(gt[:, 0].astype(int)):
        cams[i, y0:y1 + 1, x0:x1 + 1] = 1.0
    assert loc.max_box_acc(cams=cams, gt_boxes=gt)['box_acc'][0] == 1.0
    acc2 = loc.max_box_acc_v2(cams=cams, gt_boxes=gt)
    np.testing.assert_array_equal(acc2['box_acc'], [1.0, 1.0, 1.0])
    assert acc2['box_acc_mean'] == 1.0


# =============================================================================
# Fixed-threshold loc and CAM normalization.
# =============================================================================
def test_fixed_threshold_loc_equals_its_own_tree_and_scipy():
    """tau = theta * max joins each image's thresholds in the sweep's tree; the
    boxes equal the largest component of cam >= tau found on its own (the
    implementation before) and by scipy. Raw, unnormalized maps, some
    negative or constant."""
    rng = np.random.default_rng(8)
    cams = rng.normal(size=(40, 12, 12)).astype(np.float32)
    cams[:20] = smooth_cams(rng, 20, 12) * 3 - 1
    cams[20], cams[21] = -2.0, 0.0
    gt = boxes_around(rng, cams)
    for theta in (0.2, 1.0):
        iou = loc.fixed_threshold_loc(cams=cams, gt_boxes=gt, pred_correct=np.ones(40, bool),
                                      theta=theta)['iou']
        tau = theta * cams.max(axis=(1, 2), keepdims=True)
        boxes = loc.largest_component_box(masks=cams >= tau)
        own_tree = np.max(np.asarray(loc.box_iou(a=boxes[:, None], b=gt)), axis=-1)
        np.testing.assert_array_equal(iou, own_tree)
        np.testing.assert_array_equal(iou, ref_sweep_ious(cams=cams, gt_boxes=gt,
                                                          thresholds=[], theta=theta)['fixed'])
        # -2 everywhere: tau = -2 theta is above it unless theta = 1; 0 everywhere: all.
        assert (iou[20] > 0) == (theta == 1.0) and iou[21] > 0
        assert len(np.unique(iou)) > 20                      # boxes of every kind


@pytest.mark.parametrize('step', [0.05, 0.007])  # 20 thresholds (+ tau); 143: binary search
def test_eval_localization_one_tree_per_chunk_matches_scipy(monkeypatch, step):
    """mode=eval's localization numbers (top-1 / GT-known loc, MaxBoxAcc, V2 and
    their thresholds) are the same with the IoUs from one component tree per
    chunk as with the scipy loop's, which labels every mask on its own. The
    0.05 grid holds tau = 0.2 * max itself (a tie in each image's thresholds)."""
    rng = np.random.default_rng(9)
    cams = np.maximum(rng.normal(size=(24, 7, 7)), 0).astype(np.float32)  # ReLU'd, upsampled
    cams[:12] = smooth_cams(rng, 12, 7)
    cams[5] = 1.0                                           # constant: normalized to zeros
    maps = np.asarray(loc.normalize_cams(cams=cams, size=(48, 48)))
    gt = boxes_around(rng, maps).astype(np.int32)          # int32, as eval batches carry them
    args = dict(cams=cams, gt_boxes=gt, correct=rng.random(24) < 0.7, image_size=48, theta=0.2,
                threshold_step=step, chunk=8)
    trees = []
    tree_inputs = loc._tree_inputs
    monkeypatch.setattr(loc, '_tree_inputs', lambda *a: trees.append(1) or tree_inputs(*a))
    ours = evaluate.localization_metrics(**args)
    assert len(trees) == 3                                  # 24 images, chunks of 8
    monkeypatch.setattr(loc, 'sweep_ious', ref_sweep_ious)
    assert evaluate.localization_metrics(**args) == ours
    assert 0 < ours['gt_known_loc'] < 1 and 0 < ours['max_box_acc'] < 1
    assert ours['top1_loc'] < ours['gt_known_loc'] and 0 < ours['max_box_acc_v2'] < 1


def test_fixed_threshold_loc_top1_vs_gt_known():
    """tau = 0.2 * max: a wide 1.5 plateau is below tau = 2 for a map peaking at
    10, so only the peak is boxed; with an absolute 0.2 the plateau would win."""
    cams = np.zeros((3, 10, 10), np.float32)
    cams[:, 5:10, 0:10] = 1.5                          # large, below 0.2 * max
    cams[0, 0:3, 0:3] = cams[1, 0:3, 0:3] = 10.0       # peak on the gt
    cams[0, 3, 0:3] = 2.0                              # == tau: counts (>=)
    cams[2, 0:2, 6:9] = 10.0                           # peak away from the gt
    gt = np.array([[[0, 0, 2, 3]], [[0, 0, 2, 2]], [[0, 0, 2, 2]]], np.float32)
    out = loc.fixed_threshold_loc(cams=cams, gt_boxes=gt,
                                  pred_correct=np.array([True, False, True]))
    np.testing.assert_allclose(out['iou'], [1.0, 1.0, 0.0])
    assert out['gt_known_loc'] == pytest.approx(2 / 3)
    assert out['top1_loc'] == pytest.approx(1 / 3)     # image 1: right box, wrong class
    strict = loc.fixed_threshold_loc(cams=cams, gt_boxes=gt, pred_correct=np.ones(3, bool),
                                     iou_threshold=1.0)
    assert strict['gt_known_loc'] == pytest.approx(2 / 3)


def test_normalize_cams():
    rng = np.random.default_rng(6)
    cams = rng.normal(size=(3, 7, 7)).astype(np.float32)
    cams[2] = 3.0                                      # constant map
    out = np.asarray(loc.normalize_cams(cams=cams, size=(32, 24)))
    assert out.shape == (3, 32, 24)
    for i in range(2):
        assert out[i].min() == 0.0 and out[i].max() == pytest.approx(1.0)
    np.testing.assert_array_equal(out[2], 0.0)
    # Invariant to a positive affine change of the CAM (e.g. adding a bias).
    shifted = np.asarray(loc.normalize_cams(cams=2.0 * cams + 5.0, size=(32, 24)))
    np.testing.assert_allclose(shifted, out, atol=1e-5)
