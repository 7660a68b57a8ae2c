"""CAM localization metrics: CAM -> boxes, IoU, MaxBoxAcc / MaxBoxAccV2, top-1
and GT-known localization.

Conventions:
- Boxes are (x0, y0, x1, y1) with INCLUSIVE pixel coordinates: (0, 0, 0, 0) is
  the single top-left pixel, of area 1.
- A box is empty when a coordinate is negative or x1 < x0 or y1 < y0. Empty
  boxes have IoU 0 with everything. Ground-truth boxes are padded to (N, M, 4)
  with rows of -1; a predicted box is all -1 when there is nothing to box.
- A pixel is foreground at CAM threshold thr when `cam >= thr` (>=, not >),
  compared in the CAMs' dtype (float32; thresholds are cast to it).
- Components are 8-connected (diagonal neighbours are connected), as
  scipy.ndimage.label with structure=np.ones((3, 3)). "Largest" breaks ties by
  the first pixel in raster order, i.e. scipy's smallest label.
- Callers pass the CAM of the class being localized, without the classifier
  bias (a constant shift moves every threshold): the predicted class for top-1
  loc, the ground-truth class for GT-known loc / MaxBoxAcc. Whether the CAM
  uses positive classifier weights only is the caller's choice.

How the threshold sweep is vectorized (`sweep_ious`): the masks of one CAM
at increasing thresholds are nested, so one component tree describes all T of
them, built in O(H W) per image instead of O(T H W) (a max-tree, as in
mathematical morphology). The thresholds may differ per image (eval adds each
map's own tau = theta * max to the shared sweep), as long as each image's are
ascending:
  1. Each pixel gets its level = #{t: cam >= thr_t}; it is in mask t iff
     level > t. As the threshold falls, pixels enter by decreasing level, in a
     level by decreasing (rounded) cam, then in raster order.
  2. Every pixel points at its neighbour that entered first, if any entered
     before it (steepest ascent). Pointer jumping gives each pixel the end of
     its ascent path, a "birth" (a pixel with no earlier neighbour). A pixel
     and its birth are connected in every mask that holds the pixel.
  3. Components of different births merge only at pixels whose earlier
     neighbours form two or more groups around them ("candidates", a handful
     per smooth CAM). A short loop over the candidates in entry order,
     vectorized over images, records which birth merges into which at what
     level.
  4. Pixel counts and extremes per (birth, level) (scatters), accumulated over
     levels and sent to each birth's tree root at each threshold, give the area
     and box of every component of every mask.
All of it is dense or gather/scatter work vectorized over images; only the
largest number of births and candidates (array sizes) goes to the host, once
per chunk of images. Chunks are small by default: on CPU, cache-sized arrays
run several times faster than large ones.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The 8 neighbours (dy, dx) in ring order: NW N NE E SE S SW W.
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
_BIG = 1 << 30
_UNROLL_MAX_T = 128       # above this many thresholds, binary search for the levels
_DENSE_MERGE_MAX = 64     # above this many births per image, a pointer-based merge loop
_ORDER_DROP_BITS = 8      # float32 mantissa bits ignored when ordering pixels in a level
_CHUNK_PIXELS = 1 << 19   # default images per chunk = this / (H * W)
DEFAULT_THRESHOLDS = np.arange(0, 1, 0.01)


# =============================================================================
# Boxes and CAMs.
# =============================================================================
def _box_valid(box):
    return (box[..., 0] >= 0) & (box[..., 1] >= 0) & (box[..., 2] >= box[..., 0]) \
        & (box[..., 3] >= box[..., 1])


def box_iou(*, a, b):
    """Intersection over union of boxes with inclusive pixel coordinates.

    Args:
      a: (..., 4) boxes (x0, y0, x1, y1); broadcasts against b.
      b: (..., 4) boxes.
    Returns:
      (...) float32. Width and height count both end pixels, w = x1 - x0 + 1
      and h = y1 - y0 + 1 (Choe et al. 2020's evaluation code), so
      (0, 0, 0, 0) has area 1 and IoU 1 with itself. Empty boxes (a negative
      coordinate, e.g. a -1 padding row, or x1 < x0 or y1 < y0) give IoU 0.
    """
    a = jnp.asarray(a).astype(jnp.float32)
    b = jnp.asarray(b).astype(jnp.float32)
    both = _box_valid(a) & _box_valid(b)
    iw = jnp.maximum(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]) + 1, 0)
    ih = jnp.maximum(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]) + 1, 0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = jnp.where(both, area_a + area_b - inter, 1.0)  # no 0/0 on empty pairs
    return jnp.where(both, inter / union, 0.0)


def _best_gt_iou(boxes, gt_boxes):
    """(N, ..., 4) boxes vs (N, M, 4) gt -> (N, ...) IoU with the best-matching gt."""
    extra = boxes.ndim - 2
    gt = gt_boxes.reshape(gt_boxes.shape[:1] + (1,) * extra + gt_boxes.shape[1:])
    return jnp.max(box_iou(a=boxes[..., None, :], b=gt), axis=-1)


def normalize_cams(*, cams, size):
    """Upsample CAMs to the image size and min-max normalize each map to [0, 1].

    Args:
      cams: (N, h, w) CAMs.
      size: (H, W) target size.
    Returns:
      (N, H, W) float32 in [0, 1]: bilinear resize (jax.image.resize, half-pixel
      centres like cv2.resize), then (M - min M) / (max M - min M) per map. A
      constant map becomes zeros: it localizes nothing.
    """
    return _normalize_cams(jnp.asarray(cams, jnp.float32), tuple(int(s) for s in size))


@functools.partial(jax.jit, static_argnums=(1,))
def _normalize_cams(cams, size):
    up = jax.image.resize(cams, (cams.shape[0], *size), method='bilinear')
    lo = jnp.min(up, axis=(1, 2), keepdims=True)
    span = jnp.max(up, axis=(1, 2), keepdims=True) - lo
    return jnp.where(span > 0, (up - lo) / jnp.where(span > 0, span, 1.0), 0.0)


# =============================================================================
# Component tree of the nested threshold masks (see the module docstring).
# =============================================================================
def _bits(n):
    return max(int(n).bit_length(), 1)


def _levels(cams, thresholds):
    """(N, H, W) int32 number of thresholds <= cam; thresholds (T,) or per
    image (N, T), ascending."""
    thresholds = jnp.broadcast_to(thresholds, (cams.shape[0], thresholds.shape[-1]))
    if thresholds.shape[1] <= _UNROLL_MAX_T:
        # Unrolled compares fuse into one elementwise pass: on CPU ~6x faster
        # than searchsorted's gathers for the usual 100 thresholds.
        return sum((cams >= thresholds[:, i, None, None]).astype(jnp.int32)
                   for i in range(thresholds.shape[1]))
    return jax.vmap(lambda t, c: jnp.searchsorted(t, c, side='right'))(
        thresholds, cams).astype(jnp.int32)


def _order_value(cams, level):
    """The value that orders pixels inside a level: the cam with its low
    mantissa bits cleared (a monotone rounding), so that 1-ulp ripples of
    resized maps do not each start a new component; -inf in no mask."""
    bits = lax.bitcast_convert_type(cams, jnp.int32) & ~((1 << _ORDER_DROP_BITS) - 1)
    return jnp.where(level > 0, lax.bitcast_convert_type(bits, jnp.float32), -jnp.inf)


def _earlier(nlevel, nvalue, level, value, offset):
    """Whether the neighbour at `offset` (a static raster offset) enters the
    masks before the pixel: a higher level; in the same level a higher order
    value, or an equal one and an earlier raster position."""
    return (nlevel > level) | ((nlevel == level) & (
        (nvalue > value) | ((nvalue == value) & (offset < 0))))


def _row_major_cumsum(x):
    """Inclusive cumsum of (..., H, W) bool over the flattened H*W grid.

    A triangular matmul per row plus a cumsum of row totals: on XLA:CPU ~3x
    faster than a cumsum over H*W. Exact: counts stay far below 2**24.
    """
    w = x.shape[-1]
    tri = jnp.triu(jnp.ones((w, w), jnp.float32))
    rows = jnp.dot(x.astype(jnp.float32), tri, precision=lax.Precision.HIGHEST)
    totals = rows[..., -1]
    before = jnp.cumsum(totals, axis=-1) - totals
    return (rows + before[..., None]).astype(jnp.int32).reshape(*x.shape[:-2], -1)


@jax.jit
def _prepare(cams, thresholds):
    """Levels, steepest-ascent pointers, births and merge candidates.

    As the threshold falls, pixels enter the masks by decreasing level, inside
    a level by decreasing order value (`_order_value`), then in raster order.

    Args:
      cams: (N, H, W) float32; thresholds: (T,) or (N, T), ascending.
    Returns:
      level (N, H, W) int32; value (N, H, W) float32 order values; up (N, H*W)
      int32; birth, cand (N, H, W) bool; the largest per-image birth and
      candidate counts (scalars, read by the host to size tables).
    """
    n, h, w = cams.shape
    level = _levels(cams, thresholds)
    value = _order_value(cams, level)
    pad = lambda a, fill: jnp.pad(a, ((0, 0), (1, 1), (1, 1)), constant_values=fill)
    plevel, pvalue = pad(level, 0), pad(value, -jnp.inf)
    best_level = jnp.full(level.shape, -1, jnp.int32)
    best_value = jnp.full(value.shape, -jnp.inf, value.dtype)
    step = jnp.zeros(level.shape, jnp.int32)
    earlier = {}
    # Increasing raster offset, and strict > below: ties go to the earliest.
    for dy, dx in sorted(_RING, key=lambda d: d[0] * w + d[1]):
        window = (slice(None), slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
        nlevel, nvalue = plevel[window], pvalue[window]
        earlier[dy, dx] = _earlier(nlevel, nvalue, level, value, dy * w + dx)
        better = earlier[dy, dx] & ((nlevel > best_level)
                                    | ((nlevel == best_level) & (nvalue > best_value)))
        best_level = jnp.where(better, nlevel, best_level)
        best_value = jnp.where(better, nvalue, best_value)
        step = jnp.where(better, dy * w + dx, step)
    inside = level > 0
    has_earlier = best_level >= 0
    pix = jnp.arange(h * w, dtype=jnp.int32).reshape(h, w)
    up = (pix + jnp.where(inside & has_earlier, step, 0)).reshape(n, h * w)
    birth = inside & ~has_earlier
    # Groups of earlier neighbours around the ring: edge neighbours N E S W are
    # pairwise adjacent in a cycle; a corner joins its two edge neighbours. One
    # group means all earlier neighbours already touch: no merge can happen.
    ring = [earlier[d] for d in _RING]
    edge, corner = ring[1::2], ring[0::2]
    groups = sum((edge[j] & ~edge[j - 1]).astype(jnp.int32) for j in range(4))
    groups = jnp.where(edge[0] & edge[1] & edge[2] & edge[3], 1, groups)
    groups = groups + sum((corner[j] & ~edge[j] & ~edge[j - 1]).astype(jnp.int32)
                          for j in range(4))
    cand = inside & (groups >= 2)
    return (level, value, up, birth, cand, jnp.max(jnp.sum(birth, axis=(1, 2))),
            jnp.max(jnp.sum(cand, axis=(1, 2))))


def _component_tree(level, value, up, birth, cand, *, capacity, num_candidates,
                    num_thresholds, sparse_merge):
    """Every component of every threshold mask, as (N, T, C) tables over births.

    Args:
      level, value, up, birth, cand: from `_prepare`.
      capacity: C >= the number of births of any image.
      num_candidates: K >= the number of candidates of any image.
      num_thresholds: T.
      sparse_merge: union-find pointers instead of a flat root table in the
        merge loop (for large C).
    Returns:
      label: (N, H*W) birth id of each pixel (-1 outside every mask).
      root: (N, T, C) the birth id each birth belongs to at threshold t.
      exists: (N, T, C) bool, a component of mask t is rooted at that birth.
      area, first: (N, T, C) pixel count and first raster index of the
        component (meaningful where exists).
      box: (N, T, C, 4) its bounding box (x0, y0, x1, y1).
    """
    n, h, w = level.shape
    p, c, k, num_t = h * w, capacity, num_candidates, num_thresholds
    num_levels = num_t + 1
    level = level.reshape(n, p)
    image = jnp.arange(n, dtype=jnp.int32)[:, None]

    # --- 2. root of each pixel's ascent path, numbered in raster order -------
    def jump(state):
        ptr, _ = state
        nxt = jnp.take_along_axis(ptr, ptr, axis=1)
        return nxt, jnp.any(nxt != ptr)
    root_pixel, _ = lax.while_loop(lambda s: s[1], jump, (up, jnp.array(True)))
    counts = _row_major_cumsum(jnp.stack([birth, cand]))                 # (2, N, P)
    birth_id = counts[0] - 1
    label = jnp.where(level > 0, jnp.take_along_axis(birth_id, root_pixel, axis=1), -1)

    # --- 3. merges, at the candidates in the order they enter ----------------
    # The j-th candidate in raster order is where the running count reaches j+1.
    cpix = jax.vmap(lambda cnt: jnp.searchsorted(cnt, jnp.arange(1, k + 1), side='left'))(
        counts[1]).astype(jnp.int32)
    real = cpix < p
    cpix = jnp.where(real, cpix, 0)
    cval = jnp.take_along_axis(value.reshape(n, p), cpix, axis=1)
    clev = jnp.where(real, jnp.take_along_axis(level, cpix, axis=1), 0)
    neg_lev, neg_val, cpix, real = lax.sort((-clev, -cval, cpix, real), dimension=1,
                                            num_keys=3)                # entry order
    clev, cval = -neg_lev, -neg_val
    offsets = [dy * w + dx for dy, dx in _RING]
    flat = ((cpix // w + 1) * (w + 2) + cpix % w + 1)[:, :, None] \
        + jnp.array([dy * (w + 2) + dx for dy, dx in _RING], jnp.int32)
    flat = flat.reshape(n, -1)

    def around(a, fill):
        padded = jnp.pad(a.reshape(n, h, w), ((0, 0), (1, 1), (1, 1)), constant_values=fill)
        return jnp.take_along_axis(padded.reshape(n, -1), flat, axis=1).reshape(n, k, 8)
    earlier = real[..., None] & _earlier(around(level, 0), around(value, -jnp.inf),
                                         clev[..., None], cval[..., None], jnp.array(offsets))
    nbr_ids = jnp.transpose(jnp.where(earlier, around(label, -1), -1), (1, 2, 0))  # (K, 8, N)
    cand_level = jnp.where(real, clev, 0).T                                         # (K, N)
    ids = jnp.arange(c, dtype=jnp.int32)[:, None]
    cols = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (8, n))

    def merge_dense(i, state):
        """Merges at candidate i, with `root_of` kept flat (every id -> its root):
        O(C) dense work per candidate, fastest while C is small."""
        root_of, parent, merge_level = state                               # each (C, N)
        nbr, lv = nbr_ids[i], cand_level[i]
        roots = jnp.sum(jnp.where(nbr[:, None, :] == ids[None], root_of[None], 0), axis=1)
        roots = jnp.where(nbr >= 0, roots, _BIG)                           # (8, N)
        winner = jnp.min(roots, axis=0)
        active = lv > 0
        absorbed = jnp.any(roots[:, None, :] == ids[None], axis=0) & (ids != winner) & active
        moved = jnp.any(root_of[None] == roots[:, None, :], axis=0) & active
        return (jnp.where(moved, winner, root_of), jnp.where(absorbed, winner, parent),
                jnp.where(absorbed, lv, merge_level))

    def merge_sparse(i, state):
        """The same with `root_of` as union-find pointers: O(1) gathers and
        scatters per candidate, for images with many births (noise)."""
        root_of, parent, merge_level = state
        nbr, lv = nbr_ids[i], cand_level[i]
        valid = (nbr >= 0) & (lv > 0)
        step = lambda x: root_of[x, cols]
        roots = lax.while_loop(lambda x: jnp.any(step(x) != x), step, jnp.maximum(nbr, 0))
        roots = jnp.where(valid, roots, _BIG)
        winner = jnp.broadcast_to(jnp.min(roots, axis=0), (8, n))
        target = jnp.where(valid & (roots != winner), roots, c)           # c: dropped
        compress = jnp.where(valid, nbr, c)
        return (root_of.at[target, cols].set(winner, mode='drop')
                .at[compress, cols].set(winner, mode='drop'),
                parent.at[target, cols].set(winner, mode='drop'),
                merge_level.at[target, cols].set(jnp.broadcast_to(lv, (8, n)), mode='drop'))
    init = (jnp.broadcast_to(ids, (c, n)), jnp.broadcast_to(ids, (c, n)),
            jnp.full((c, n), -1, jnp.int32))
    _, parent, merge_level = lax.fori_loop(0, k, merge_sparse if sparse_merge else merge_dense,
                                           init)

    # Root of each birth at threshold t: follow merges made at levels > t.
    # Levels only fall along a merge chain, so pointer doubling is exact.
    t = jnp.arange(num_t, dtype=jnp.int32)
    root = jnp.where(merge_level.T[:, None, :] > t[None, :, None], parent.T[:, None, :],
                     jnp.arange(c, dtype=jnp.int32))                       # (N, T, C)
    for _ in range(_bits(c - 1)):
        root = jnp.take_along_axis(root, root, axis=2)

    # --- 4. component statistics at every threshold ---------------------------
    pix = jnp.arange(p, dtype=jnp.int32)
    col_major = (pix % w) * h + pix // w
    num_bins = c * num_levels
    bins = (jnp.where(label >= 0, label * num_levels + level, num_bins)
            + image * (num_bins + 1)).reshape(-1)
    to_root = ((jnp.arange(n)[:, None, None] * num_t + t[None, :, None]) * c + root).reshape(-1)

    def stat(values, add):
        """Sum (add) or min of `values` over each component of each mask."""
        fill = 0 if add else _BIG
        values = jnp.broadcast_to(values, (n, p)).reshape(-1)
        table = jnp.full(n * (num_bins + 1), fill, jnp.int32)
        table = table.at[bins].add(values) if add else table.at[bins].min(values)
        table = table.reshape(n, num_bins + 1)[:, :num_bins].reshape(n, c, num_levels)
        # Mask t holds levels t+1..T: reverse cumulative over levels, then t+1.
        table = (lax.cumsum if add else lax.cummin)(table, axis=2, reverse=True)[:, :, 1:]
        table = jnp.swapaxes(table, 1, 2).reshape(-1)                    # (N, T, C)
        out = jnp.full(n * num_t * c, fill, jnp.int32)
        out = out.at[to_root].add(table) if add else out.at[to_root].min(table)
        return out.reshape(n, num_t, c)
    area = stat(1, add=True)
    first = stat(pix, add=False)
    last = -stat(-pix, add=False)
    col_first, col_last = stat(col_major, add=False), -stat(-col_major, add=False)
    exists = (area > 0) & (root == jnp.arange(c, dtype=jnp.int32))
    box = jnp.stack([col_first // h, first // w, col_last // h, last // w], axis=-1)
    return dict(label=label, root=root, exists=exists, area=area, first=first, box=box)


def _largest(tree):
    """(N, T, 4) box of the largest component (ties: first in raster order), -1 if none."""
    exists, area = tree['exists'], tree['area']
    top = jnp.max(jnp.where(exists, area, -1), axis=-1, keepdims=True)
    pick = jnp.argmin(jnp.where(exists & (area == top), tree['first'], _BIG), axis=-1)
    box = jnp.take_along_axis(tree['box'], pick[..., None, None], axis=2)[:, :, 0]
    return jnp.where(jnp.any(exists, axis=-1)[..., None], box, -1)


@functools.partial(jax.jit, static_argnames=('capacity', 'num_candidates', 'num_thresholds',
                                             'sparse_merge'))
def _sweep_kernel(level, value, up, birth, cand, gt_boxes, **sizes):
    tree = _component_tree(level, value, up, birth, cand, **sizes)
    largest = _largest(tree)
    # MaxBoxAcc's box: the largest component's; MaxBoxAccV2's multi-contour
    # boxes: every component's, the best match counts (Choe et al. 2020).
    largest_iou = _best_gt_iou(largest, gt_boxes)
    any_iou = jnp.max(jnp.where(tree['exists'], _best_gt_iou(tree['box'], gt_boxes), 0.0), -1)
    return largest, largest_iou, any_iou


@functools.partial(jax.jit, static_argnames=('capacity', 'num_candidates', 'sparse_merge'))
def _mask_kernel(level, value, up, birth, cand, **sizes):
    tree = _component_tree(level, value, up, birth, cand, num_thresholds=1, **sizes)
    exists = tree['exists'][:, 0]
    order = jnp.argsort(jnp.where(exists, tree['first'][:, 0], _BIG), axis=1)  # scipy's order
    rank = jnp.argsort(order, axis=1)
    box = jnp.take_along_axis(tree['box'][:, 0], order[..., None], axis=1)
    area = jnp.take_along_axis(tree['area'][:, 0], order, axis=1)
    present = jnp.take_along_axis(exists, order, axis=1)
    root = jnp.take_along_axis(tree['root'][:, 0], jnp.maximum(tree['label'], 0), axis=1)
    labels = jnp.where(tree['label'] >= 0, jnp.take_along_axis(rank, root, axis=1) + 1, 0)
    return (labels.reshape(level.shape), jnp.where(present[..., None], box, -1),
            jnp.where(present, area, 0), jnp.sum(exists, axis=1))


def _capacity(count, floor):
    """A power of two >= count (and >= floor), so few shapes get compiled."""
    return max(floor, 1 << max(int(count) - 1, 0).bit_length())


def _chunks(n, per_chunk):
    """(start, stop, padded size) of each chunk. Chunks after the first are
    padded to the first's size so they reuse its compiled kernels."""
    per_chunk = max(1, min(per_chunk, n))
    return [(s, min(s + per_chunk, n), per_chunk) for s in range(0, n, per_chunk)]


def _pad_to(x, size, fill):
    extra = size - x.shape[0]
    return x if extra == 0 else jnp.concatenate(
        [x, jnp.full((extra, *x.shape[1:]), fill, x.dtype)])


def _tree_inputs(cams, thresholds):
    prep = _prepare(cams, thresholds)
    capacity = _capacity(prep[5], 8)
    sizes = dict(capacity=capacity, num_candidates=_capacity(prep[6], 32),
                 sparse_merge=capacity > _DENSE_MERGE_MAX)
    return prep[:5], sizes


# =============================================================================
# Connected components of boolean masks.
# =============================================================================
def _mask_components(masks, chunk_size):
    masks = jnp.asarray(masks, bool)
    n, h, w = masks.shape
    if n == 0:
        return (jnp.zeros(masks.shape, jnp.int32), jnp.zeros((0, 0, 4), jnp.int32),
                jnp.zeros((0, 0), jnp.int32), jnp.zeros((0,), jnp.int32))
    outs = []
    for start, stop, size in _chunks(n, chunk_size or _CHUNK_PIXELS // (h * w)):
        cams = _pad_to(masks[start:stop], size, False).astype(jnp.float32)
        inputs, sizes = _tree_inputs(cams, jnp.array([0.5], jnp.float32))
        outs.append([x[:stop - start] for x in _mask_kernel(*inputs, **sizes)])
    width = max(o[1].shape[1] for o in outs)
    pad = lambda x, fill: jnp.pad(x, ((0, 0), (0, width - x.shape[1])) + ((0, 0),) * (x.ndim - 2),
                                  constant_values=fill)
    return (jnp.concatenate([o[0] for o in outs]), jnp.concatenate([pad(o[1], -1) for o in outs]),
            jnp.concatenate([pad(o[2], 0) for o in outs]), jnp.concatenate([o[3] for o in outs]))


def label_components(*, masks, chunk_size=None):
    """8-connected component labels, numbered like scipy.ndimage.label.

    Args:
      masks: (N, H, W) bool.
      chunk_size: images per kernel call (default: 512K pixels' worth).
    Returns:
      labels: (N, H, W) int32, 0 = background, components 1..n in raster order
        of their first pixel (identical to scipy.ndimage.label with
        structure=np.ones((3, 3))).
      num: (N,) int32 component counts.
    Host-level (not jittable): array capacities depend on the data.
    """
    labels, _, _, num = _mask_components(masks, chunk_size)
    return labels, num


def component_boxes(*, masks, max_components=None, chunk_size=None):
    """Bounding boxes of all 8-connected components (for MaxBoxAccV2).

    Args:
      masks: (N, H, W) bool.
      max_components: K, slots per image (default: the most components of any
        image). Components beyond K, in label order, are dropped.
      chunk_size: images per kernel call.
    Returns:
      boxes: (N, K, 4) int32 (x0, y0, x1, y1) inclusive, in scipy label order
        (raster order of first pixel); unused slots are -1.
      areas: (N, K) int32 pixel counts, 0 in unused slots.
    """
    _, boxes, areas, num = _mask_components(masks, chunk_size)
    k = int(jnp.max(num, initial=0)) if max_components is None else max_components
    if k > boxes.shape[1]:
        boxes = jnp.pad(boxes, ((0, 0), (0, k - boxes.shape[1]), (0, 0)), constant_values=-1)
        areas = jnp.pad(areas, ((0, 0), (0, k - areas.shape[1])))
    return boxes[:, :k], areas[:, :k]


def largest_component_box(*, masks, chunk_size=None):
    """(N, 4) int32 box of each mask's largest 8-connected component.

    Ties go to the component whose first pixel comes first in raster order
    (scipy's smallest label). An empty mask gives the empty box (-1, -1, -1, -1),
    whose IoU with anything is 0.
    """
    boxes, areas = component_boxes(masks=masks, chunk_size=chunk_size)
    if boxes.shape[1] == 0:
        return jnp.full((boxes.shape[0], 4), -1, jnp.int32)
    # argmax picks the first maximum; slots are in label order.
    return jnp.take_along_axis(boxes, jnp.argmax(areas, axis=1)[:, None, None], axis=1)[:, 0]


# =============================================================================
# Threshold sweeps: MaxBoxAcc (V1) and MaxBoxAccV2.
# =============================================================================
def sweep_ious(*, cams, gt_boxes, thresholds=DEFAULT_THRESHOLDS, theta=None, chunk_size=None):
    """Per image and CAM threshold, the IoU with the best-matching gt box of
    the box around the largest 8-connected component of cam >= thr (MaxBoxAcc)
    and of the best of all components' boxes (MaxBoxAccV2's multi-contour
    boxes): Choe et al., CVPR 2020, "Evaluating Weakly Supervised Object
    Localization Methods Right", and its TPAMI 2022 version. One component tree
    per chunk of images gives both, and the fixed-threshold IoU too.

    Args:
      cams: (N, H, W) CAMs, normally in [0, 1] (`normalize_cams`).
      gt_boxes: (N, M, 4) gt boxes, rows of -1 as padding.
      thresholds: (T,) CAM thresholds, in any order; foreground is cam >= thr.
      theta: if given, also the largest component's IoU at each map's own
        tau = theta * max M (`fixed_threshold_loc`): tau joins that image's
        thresholds in the same tree.
      chunk_size: images per kernel call (default: 512K pixels' worth).
    Returns:
      dict of float32 numpy arrays, 0 where the mask is empty: 'largest' and
      'any', (N, T) with columns in the order of `thresholds`; with theta,
      'fixed', (N,). Host-level (not jittable): array sizes depend on the data.
    """
    cams = jnp.asarray(cams, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    n, h, w = cams.shape
    thresholds = np.asarray(thresholds, np.float32).reshape(-1)
    num_t = thresholds.size
    ious = {k: np.zeros((n, num_t + (theta is not None)), np.float32) for k in ('largest', 'any')}
    for start, stop, size in _chunks(n, chunk_size or _CHUNK_PIXELS // (h * w)):
        chunk = _pad_to(cams[start:stop], size, 0.0)
        rows = np.broadcast_to(thresholds, (size, num_t))
        if theta is not None:  # tau = theta * max M, one per image
            tau = np.asarray(theta * jnp.max(chunk, axis=(1, 2)))
            rows = np.concatenate([rows, tau[:, None]], axis=1)
        # The tree needs each image's thresholds ascending (a NaN tau sorts
        # last: its mask, like cam >= NaN, is empty); `back` undoes the sort.
        order = np.argsort(rows, axis=1, kind='stable')
        back = np.argsort(order, axis=1)
        inputs, sizes = _tree_inputs(chunk, jnp.asarray(np.take_along_axis(rows, order, 1)))
        _, largest_iou, any_iou = _sweep_kernel(
            *inputs, _pad_to(gt_boxes[start:stop], size, -1.0), num_thresholds=rows.shape[1],
            **sizes)
        for key, iou in (('largest', largest_iou), ('any', any_iou)):
            ious[key][start:stop] = np.take_along_axis(np.asarray(iou), back, 1)[:stop - start]
    out = {'largest': ious['largest'][:, :num_t], 'any': ious['any'][:, :num_t]}
    if theta is not None:
        out['fixed'] = ious['largest'][:, num_t]
    return out


def threshold_ious(*, cams, gt_boxes, thresholds=DEFAULT_THRESHOLDS, multi_contour=False,
                   chunk_size=None):
    """IoU of the predicted box(es) with the best-matching gt box, per image and
    CAM threshold.

    Args:
      cams: (N, H, W) CAMs, normally in [0, 1] (`normalize_cams`).
      gt_boxes: (N, M, 4) gt boxes, rows of -1 as padding.
      thresholds: (T,) CAM thresholds; foreground is cam >= thr.
      multi_contour: False: the box around the largest component of each mask
        (MaxBoxAcc). True: the best IoU over the boxes of all components
        (MaxBoxAccV2's multi-contour evaluation).
      chunk_size: images per kernel call (default: 512K pixels' worth).
    Returns:
      (N, T) float32 numpy array, columns in the order of `thresholds`; 0
      where the mask is empty. Host-level (not jittable): array sizes depend on
      the data. Needing both? `sweep_ious` computes them in one pass.
    """
    ious = sweep_ious(cams=cams, gt_boxes=gt_boxes, thresholds=thresholds,
                      chunk_size=chunk_size)
    return ious['any' if multi_contour else 'largest']


def box_accuracy(*, ious, thresholds=DEFAULT_THRESHOLDS, iou_thresholds=(0.5,)):
    """Reduce (N, T) IoUs from `threshold_ious` to MaxBoxAcc numbers.

    Returns a dict of numpy values:
      'box_acc': (J,) per IoU threshold, the best over CAM thresholds of the
        fraction of images with IoU >= the IoU threshold.
      'best_threshold': (J,) the CAM threshold reaching it (the lowest on ties).
      'box_acc_mean': float, mean of 'box_acc' over the IoU thresholds (the
        MaxBoxAccV2 number when iou_thresholds = (0.3, 0.5, 0.7)).
      'curve': (J, T) accuracy at each CAM threshold (the order given).
      'thresholds', 'iou_thresholds': the sweeps, as numpy arrays.
    """
    ious = np.asarray(ious)
    thresholds = np.asarray(thresholds, np.float32).reshape(-1)
    iou_thresholds = np.asarray(iou_thresholds, np.float32).reshape(-1)
    curve = np.mean(ious[None] >= iou_thresholds[:, None, None], axis=1)      # (J, T)
    ascending = np.argsort(thresholds, kind='stable')
    best = ascending[np.argmax(curve[:, ascending], axis=1)]
    acc = curve[np.arange(iou_thresholds.size), best]
    return {'box_acc': acc, 'best_threshold': thresholds[best], 'box_acc_mean': float(acc.mean()),
            'curve': curve, 'thresholds': thresholds, 'iou_thresholds': iou_thresholds}


def max_box_acc(*, cams, gt_boxes, thresholds=DEFAULT_THRESHOLDS, iou_thresholds=(0.5,),
                multi_contour=False, chunk_size=None):
    """MaxBoxAcc (Choe et al., CVPR 2020, "Evaluating Weakly Supervised Object
    Localization Methods Right").

    For each CAM threshold, the box around the largest 8-connected component of
    cam >= thr (all components' boxes if multi_contour) is matched with the
    best gt box; an image is a hit when IoU >= the IoU threshold. BoxAcc is the
    hit fraction, MaxBoxAcc its maximum over CAM thresholds.

    Args:
      cams: (N, H, W) CAMs in [0, 1] (`normalize_cams`).
      gt_boxes: (N, M, 4) inclusive (x0, y0, x1, y1), padded with rows of -1.
      thresholds: (T,) CAM thresholds (default 0, 0.01, ..., 0.99).
      iou_thresholds: IoU thresholds, reported separately and averaged.
      multi_contour: score the best of all component boxes (MaxBoxAccV2).
      chunk_size: images per kernel call.
    Returns:
      The dict of `box_accuracy`.
    Differences from the reference code (wsolevaluation), by design: masks use
    cam >= thr on the float map rather than OpenCV's > on a uint8 copy, and an
    empty mask scores IoU 0 rather than the box (0, 0, 0, 0).
    """
    ious = threshold_ious(cams=cams, gt_boxes=gt_boxes, thresholds=thresholds,
                          multi_contour=multi_contour, chunk_size=chunk_size)
    return box_accuracy(ious=ious, thresholds=thresholds, iou_thresholds=iou_thresholds)


def max_box_acc_v2(*, cams, gt_boxes, thresholds=DEFAULT_THRESHOLDS,
                   iou_thresholds=(0.3, 0.5, 0.7), multi_contour=True, chunk_size=None):
    """MaxBoxAccV2, the revised metric of the paper's journal version (TPAMI
    2022) and wsolevaluation's default: all component boxes, IoU thresholds
    0.3 / 0.5 / 0.7 averaged into 'box_acc_mean'."""
    return max_box_acc(cams=cams, gt_boxes=gt_boxes, thresholds=thresholds,
                       iou_thresholds=iou_thresholds, multi_contour=multi_contour,
                       chunk_size=chunk_size)


# =============================================================================
# Fixed-threshold localization: top-1 and GT-known loc.
# =============================================================================
def fixed_threshold_loc(*, cams, gt_boxes, pred_correct, theta: float = 0.2,
                        iou_threshold: float = 0.5, chunk_size=None):
    """Classic CAM localization (Zhou et al. 2016; the HNC paper's protocol).

    Each map is thresholded at tau = theta * max(M) (foreground: M >= tau) and
    the box of its largest 8-connected component is matched with the best gt
    box. The same numbers as `sweep_ious(theta=...)['fixed']`, which eval uses.

    Args:
      cams: (N, H, W) CAMs of the class to localize (see the module docstring).
      gt_boxes: (N, M, 4) gt boxes, rows of -1 as padding.
      pred_correct: (N,) bool, the top-1 prediction is the true class.
      theta: fraction of each map's maximum (0.2 in the CAM paper).
      iou_threshold: IoU for a hit.
    Returns:
      dict of floats 'gt_known_loc' (fraction with IoU >= iou_threshold) and
      'top1_loc' (correct class AND IoU >= iou_threshold), plus 'iou', the (N,)
      numpy IoUs.
    """
    iou = sweep_ious(cams=cams, gt_boxes=gt_boxes, thresholds=(), theta=theta,
                     chunk_size=chunk_size)['fixed']
    hit = iou >= iou_threshold
    return {'gt_known_loc': float(np.mean(hit)),
            'top1_loc': float(np.mean(hit & np.asarray(pred_correct, bool))), 'iou': iou}
