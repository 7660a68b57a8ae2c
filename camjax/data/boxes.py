"""Ground-truth boxes: one convention from the sources to the eval batches.

* A source example may carry ``'boxes'``: float32 ``(M, 4)`` rows
  ``(x0, y0, x1, y1)``, x = column, y = row, *inclusive* pixel indices of the
  source image as stored (M may be 0).
* An eval batch carries ``'bbox'``: int32 ``(B, max_boxes, 4)`` in the same
  convention but in the *model input* resolution (``dataset.image_size``),
  rows of -1 for padding.

The rescale treats pixel i as the continuous interval [i, i+1) and keeps every
output pixel that the box's interval overlaps, so a box never shrinks out of
an object and a same-size "resize" is the identity.
"""

import math

import numpy as np

from camjax.data.problems import BAD_BOX, DataProblem
from camjax.errors import CamjaxError

# Tolerance for float rounding at pixel edges (coordinates are at most ~1e4).
_EPS = 1e-6


def normalized_to_pixels(bbox, *, height: int, width: int) -> np.ndarray:
    """TFDS BBoxFeature rows (ymin, xmin, ymax, xmax), continuous in [0, 1] ->
    float32 (M, 4) inclusive pixel boxes (x0, y0, x1, y1) of an HxW image."""
    b = np.asarray(bbox, np.float64).reshape(-1, 4)
    x0 = np.floor(b[:, 1] * width + _EPS)
    y0 = np.floor(b[:, 0] * height + _EPS)
    x1 = np.maximum(np.ceil(b[:, 3] * width - _EPS) - 1, x0)
    y1 = np.maximum(np.ceil(b[:, 2] * height - _EPS) - 1, y0)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def rescale_boxes(boxes, *, height: int, width: int, size: int) -> np.ndarray:
    """float (M, 4) inclusive boxes of an HxW image -> int32 (M, 4) inclusive
    boxes of that image resized to size x size (as transforms.to_rgb does),
    clipped to the image."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    sx, sy = size / width, size / height
    x0 = np.floor(b[:, 0] * sx + _EPS)
    y0 = np.floor(b[:, 1] * sy + _EPS)
    x1 = np.ceil((b[:, 2] + 1) * sx - _EPS) - 1
    y1 = np.ceil((b[:, 3] + 1) * sy - _EPS) - 1
    out = np.stack([x0, y0, x1, y1], axis=1).clip(0, size - 1)
    return out.astype(np.int32)


def padded_boxes(boxes, *, height: int, width: int, size: int, max_boxes: int) -> np.ndarray:
    """Source boxes -> the eval batch's int32 (max_boxes, 4), -1 rows padding.

    More than `max_boxes` boxes is an error rather than a silent truncation,
    which would make localization metrics quietly wrong."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) > max_boxes:
        raise CamjaxError(f'an example has {len(boxes)} ground-truth boxes, more than '
                          f'dataset.max_boxes={max_boxes}; raise dataset.max_boxes')
    out = np.full((max_boxes, 4), -1, np.int32)
    out[:len(boxes)] = rescale_boxes(boxes, height=height, width=width, size=size)
    return out


def check_box(values, where: str) -> np.ndarray:
    """Four numbers (x0, y0, x1, y1) read from a text file -> float32 (4,);
    `where` ('file:line') names the offending line in the error."""
    try:
        box = np.asarray([float(v) for v in values], np.float32)
    except ValueError:
        raise DataProblem(BAD_BOX, f'{where}: box coordinates {list(values)} are not '
                          'numbers') from None
    c = box.tolist()  # plain floats: this runs for every box of a dataset, at open
    if len(c) != 4 or not all(map(math.isfinite, c)) or min(c) < 0 or c[0] > c[2] or \
            c[1] > c[3]:
        raise DataProblem(BAD_BOX, f'{where}: box {list(values)} is not (x0, y0, x1, y1) with '
                          '0 <= x0 <= x1 and 0 <= y0 <= y1')
    return box


def check_box_inside(box, *, height: int, width: int, image: str, where: str) -> None:
    """A checked box lies inside its `image` of height x width pixels (inclusive
    indices: x1 <= width - 1, y1 <= height - 1)."""
    if box[2] > width - 1 or box[3] > height - 1:
        coords = ','.join(f'{v:g}' for v in box)
        raise DataProblem(BAD_BOX, f'{where}: box {coords} is outside the image {image} '
                          f'({width}x{height}, width x height)')
