"""Offline synthetic localization dataset ("synthetic_shapes") built as a local TFDS dataset.

Every image holds exactly one *class object* on a cluttered background, plus 1-3 *distractors*.
The label is the class object's identity and ``bbox`` is its ground-truth box, so the data
serves both classification and weakly-supervised localization (e.g. CAM) evaluation.

Classes (``CLASSES``) are (shape, colour, texture) triples chosen to be confusable along one
attribute at a time, so a model has to use shape *and* colour *and* texture:

* same colour, different shape: red disk / red square / red triangle;
* same shape, different colour: red / blue / green disk;
* same shape and colour, different texture: blue square vs blue striped square,
  green triangle vs green striped triangle.

Distractors belong to no class: either an *outline* of any shape in a class colour (no class
is hollow) or a solid shape in a colour no class uses (orange, cyan). Their bounding circles keep
off the class object's box dilated by 2 px, so the box is never ambiguous. The background is
low-saturation smooth noise with faint blobs and lines, while class colours are saturated, so
the task stays learnable.

Box convention: ``bbox`` is int32 ``(x0, y0, x1, y1)``, x = column, y = row, *inclusive* pixel
coordinates, computed exactly as the tight box of the class object's own pixel mask (masks are
binary, not anti-aliased, so the box is well defined). The object is always fully inside the
image; its extent is roughly 30-60% of the image side.

Generation is deterministic: example ``i`` of split ``s`` uses
``np.random.default_rng([seed, s, i])``, so a config always yields byte-identical PNGs.
Images are yielded as encoded PNG bytes and written to array_record, so neither preparing nor
reading (``tfds.data_source`` decodes with PIL) needs TensorFlow.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
import struct
import zlib

import numpy as np
import tensorflow_datasets as tfds

from camjax import paths
from camjax.errors import CamjaxError

# (name, shape, colour, texture)
CLASSES = (
    ("red_disk", "disk", "red", "solid"),
    ("red_square", "square", "red", "solid"),
    ("red_triangle", "triangle", "red", "solid"),
    ("blue_disk", "disk", "blue", "solid"),
    ("green_disk", "disk", "green", "solid"),
    ("blue_square", "square", "blue", "solid"),
    ("blue_striped_square", "square", "blue", "striped"),
    ("green_triangle", "triangle", "green", "solid"),
    ("green_striped_triangle", "triangle", "green", "striped"),
    ("yellow_cross", "cross", "yellow", "solid"),
    ("yellow_diamond", "diamond", "yellow", "solid"),
    ("purple_striped_diamond", "diamond", "purple", "striped"),
)
CLASS_NAMES = tuple(c[0] for c in CLASSES)
NUM_CLASSES = len(CLASSES)

COLOURS = {
    "red": (220, 35, 35),
    "blue": (40, 70, 225),
    "green": (35, 170, 60),
    "yellow": (235, 205, 25),
    "purple": (150, 50, 210),
    # Used only by distractors.
    "orange": (245, 135, 20),
    "cyan": (25, 200, 215),
}
SHAPES = ("disk", "square", "triangle", "cross", "diamond")
DISTRACTOR_SOLID_COLOURS = ("orange", "cyan")
_CLASS_COLOURS = tuple(sorted({c[2] for c in CLASSES}))
# The multi-label view (feature 'attributes', dataset.label_key='attributes'):
# the object's colour, its shape and, if striped, 'striped' -- 2 or 3 of 11.
ATTRIBUTE_NAMES = _CLASS_COLOURS + SHAPES + ("striped",)


def class_attributes(label: int) -> list[int]:
    """Indices into ATTRIBUTE_NAMES of class `label`'s colour, shape and texture."""
    _, shape, colour, texture = CLASSES[label]
    names = [colour, shape] + (["striped"] if texture == "striped" else [])
    return [ATTRIBUTE_NAMES.index(n) for n in names]

# Every shape fits in a disk of this radius (in units of r), even after the +-15 degree
# rotation, so centres kept this far from the border keep objects fully inside the image.
_BOUND = 1.3


def _shape_fn(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of ``shape`` in object-normalized coordinates (extent about [-1, 1])."""
    au, av = np.abs(u), np.abs(v)
    if shape == "disk":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.88
    if shape == "triangle":  # apex up (v grows downwards, like image rows)
        return (v <= 0.8) & (au <= (v + 1.0) / 1.8)
    if shape == "cross":
        return ((au <= 0.32) & (av <= 1.0)) | ((av <= 0.32) & (au <= 1.0))
    if shape == "diamond":
        return au + av <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


@functools.cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres, so masks are symmetric and boxes exact.
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[None, :], c[:, None]


@functools.cache
def _upsample_matrix(size: int, coarse: int) -> np.ndarray:
    """(size, coarse) bilinear interpolation matrix: smooth noise is ``M @ g @ M.T``."""
    pos = (np.arange(size) + 0.5) / size * (coarse - 1)
    return np.stack(
        [np.interp(pos, np.arange(coarse), np.eye(coarse)[k]) for k in range(coarse)], axis=1
    ).astype(np.float32)


def _frame(rng, cx, cy, r, size):
    """Rotated, r-normalized coordinates of every pixel around centre (cx, cy)."""
    x, y = _grid(size)
    t = rng.uniform(-np.pi / 12, np.pi / 12)
    dx, dy = (x - cx) / r, (y - cy) / r
    return np.cos(t) * dx + np.sin(t) * dy, -np.sin(t) * dx + np.cos(t) * dy


def _background(rng, size: int) -> np.ndarray:
    """Channel-first (3, S, S) float background: channel planes make masked painting cheap."""
    lum = np.full((size, size), rng.uniform(80, 190), np.float32)
    for coarse, amp in ((4, 35.0), (8, 20.0), (16, 10.0)):
        m = _upsample_matrix(size, coarse)
        lum += m @ rng.uniform(-amp, amp, (coarse, coarse)).astype(np.float32) @ m.T
    x, y = _grid(size)
    for _ in range(rng.integers(2, 6)):  # faint elliptic blobs
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.05, 0.25, 2) * size
        blob = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
        np.add(lum, np.float32(rng.uniform(-35, 35)), out=lum, where=blob)
    for _ in range(rng.integers(2, 6)):  # faint thin lines
        cx, cy = rng.uniform(0, size, 2)
        a = rng.uniform(0, np.pi)
        dist = np.abs((x - cx) * np.sin(a) - (y - cy) * np.cos(a))
        np.add(lum, np.float32(rng.uniform(-45, 45)), out=lum, where=dist <= rng.uniform(0.5, 1.2))
    # A faint per-channel tint keeps the background coloured yet far less saturated than objects.
    m = _upsample_matrix(size, 4)
    tint = m @ rng.uniform(-8, 8, (3, 4, 4)).astype(np.float32) @ m.T
    return lum + tint


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    for c in range(3):  # per contiguous plane: ~10x faster than masking an (S, S, 3) array
        img[c][mask] = colour[c]


def _gap(cx, cy, box) -> float:
    """Euclidean distance from a point to a continuous box (x0, y0, x1, y1)."""
    return float(np.hypot(max(box[0] - cx, 0, cx - box[2]), max(box[1] - cy, 0, cy - box[3])))


def render_example(
    rng: np.random.Generator, *, label: int, image_size: int = 64, return_mask: bool = False
) -> tuple[np.ndarray, ...]:
    """Returns (image uint8 (S,S,3), bbox int32 (4,) inclusive x0,y0,x1,y1).

    With ``return_mask`` also the class object's boolean (S,S) pixel mask (the box's source).
    """
    size = image_size
    _, shape, colour, texture = CLASSES[label]
    r = rng.uniform(0.15, 0.30) * size
    cx, cy = rng.uniform(_BOUND * r + 0.5, size - _BOUND * r - 0.5, 2)
    u, v = _frame(rng, cx, cy, r, size)
    mask = _shape_fn(shape, u, v)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    bbox = np.array([cols[0], rows[0], cols[-1], rows[-1]], np.int32)

    img = _background(rng, size)
    # Continuous extent of the box's pixels, dilated by 2 px, that distractors must keep off.
    keep_off = (bbox[0] - 2.0, bbox[1] - 2.0, bbox[2] + 3.0, bbox[3] + 3.0)
    for _ in range(rng.integers(1, 4)):
        for _ in range(30):  # rejection sampling on the bounding circle only: cheap scalars
            rd = rng.uniform(0.07, 0.17) * size
            dx, dy = rng.uniform(0, size, 2)
            if _gap(dx, dy, keep_off) > _BOUND * rd:
                break
        else:
            continue
        du, dv = _frame(rng, dx, dy, rd, size)
        dshape = SHAPES[rng.integers(len(SHAPES))]
        if rng.random() < 0.5:
            k = rd / (rd - max(1.5, 0.3 * rd))  # hollow: shape minus its shrunk copy
            dmask = _shape_fn(dshape, du, dv) & ~_shape_fn(dshape, du * k, dv * k)
            dcol = _CLASS_COLOURS[rng.integers(len(_CLASS_COLOURS))]
        else:
            dmask = _shape_fn(dshape, du, dv)
            dcol = DISTRACTOR_SOLID_COLOURS[rng.integers(len(DISTRACTOR_SOLID_COLOURS))]
        _paint(img, dmask, np.asarray(COLOURS[dcol], np.float32) * rng.uniform(0.8, 1.1))

    fill = np.asarray(COLOURS[colour], np.float32) * rng.uniform(0.8, 1.1)
    _paint(img, mask, fill)
    if texture == "striped":
        # Stripes of a darker shade of the same hue: still saturated, so the box stays obvious.
        _paint(img, mask & (np.floor((u + v) * 2.2) % 2 == 0), fill * 0.6)
    img += rng.random(img.shape, dtype=np.float32) * 14.0 - 7.0
    img = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0))
    return (img, bbox, mask) if return_mask else (img, bbox)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless RGB PNG, ~3x faster than PIL: no per-row filter search, fast zlib level."""
    h, w, c = image.shape
    assert image.dtype == np.uint8 and c == 3, (image.dtype, image.shape)
    # Each row is prefixed by its filter type, 0 = None.
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
    """Arbitrary-parameter config; ``name`` is derived so each parameter set gets its own dir."""

    name: str = ""
    image_size: int = 64
    num_train: int = 5000
    num_test: int = 1000
    seed: int = 0

    def __post_init__(self):
        derived = f"s{self.image_size}_tr{self.num_train}_te{self.num_test}_seed{self.seed}"
        if self.name not in ("", derived):
            # A stale name would silently reuse data prepared with other parameters.
            raise ValueError(f"config name must be {derived!r} (or empty), got {self.name!r}")
        self.name = derived


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
    """TFDS builder 'synthetic_shapes'; pass ``config=SyntheticShapesConfig(...)``."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Multi-label 'attributes'."}
    BUILDER_CONFIGS = [SyntheticShapesConfig()]
    # Nothing is downloaded, so there are no URL checksums to look up. Without this, TFDS
    # 4.9.10 locates them via `code_path`, which lazily imports `importlib_resources`, a
    # package tensorflow-datasets uses but does not declare.
    url_infos = None

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "bbox": tfds.features.Tensor(shape=(4,), dtype=np.int32),
                    "attributes": tfds.features.Sequence(
                        tfds.features.ClassLabel(names=ATTRIBUTE_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {
            "train": self._generate_examples(0, cfg.num_train),
            "test": self._generate_examples(1, cfg.num_test),
        }

    def _generate_examples(self, split_id: int, num: int):
        cfg = self.builder_config
        for i in range(num):
            label = i % NUM_CLASSES
            img, bbox = render_example(
                np.random.default_rng([cfg.seed, split_id, i]),
                label=label,
                image_size=cfg.image_size,
            )
            yield i, {"image": encode_png(img), "label": label, "bbox": bbox,
                      "attributes": class_attributes(label)}


def prepare(
    data_dir: str,
    *,
    image_size: int = 64,
    num_train: int = 5000,
    num_test: int = 1000,
    seed: int = 0,
) -> SyntheticShapes:
    """Prepares the dataset under ``data_dir`` if missing and returns its builder.

    Idempotent: a prepared config is reused (TFDS finds its ``dataset_info.json``), never
    regenerated. Read it back without TensorFlow via ``builder.as_data_source(split=...)``
    (e.g. ``'train[:90%]'``) or by name: ``tfds.data_source(f'synthetic_shapes/{name}',
    data_dir=data_dir, split=...)`` with ``name = builder.builder_config.name``; a name not in
    ``BUILDER_CONFIGS`` is then loaded from the prepared files alone. ``tfds.data_source``
    rejects a builder object (TypeError: it parses the name as a string). TFDS logs "Using
    custom data configuration" for every non-default config; that is expected.
    """
    cfg = SyntheticShapesConfig(
        image_size=image_size, num_train=num_train, num_test=num_test, seed=seed
    )
    # TFDS rejects a new config object named like a BUILDER_CONFIGS entry: reuse that entry.
    cfg = SyntheticShapes.builder_configs.get(cfg.name, cfg)
    builder = SyntheticShapes(data_dir=data_dir, config=cfg, file_format="array_record")
    if builder.is_prepared():
        return builder
    # Several processes on one host (a multi-process run) open the same data
    # dir: one prepares, the others wait and then find it prepared.
    root = data_dir or os.path.expanduser("~/tensorflow_datasets")
    if paths.is_remote(root):  # the lock below is a local flock
        raise CamjaxError(
            f"the synthetic dataset is generated on this machine; dataset.data_dir={root!r} "
            "must be a local directory"
        )
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".synthetic_shapes-{cfg.name}.lock"), "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        builder = SyntheticShapes(data_dir=data_dir, config=cfg, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
    return builder
