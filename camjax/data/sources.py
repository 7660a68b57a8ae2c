"""Dataset sources by name.

Each resolves to random-access sources (len + getitem -> {'image': uint8 HWC,
'label': int, or a multi-hot float32 (K,) vector for multi-label data, and
optionally 'boxes'}) for this process's share of the train, validation and
test splits. The validation split is carved from train, so model selection
never looks at test. dataset.train_split / dataset.test_split name the splits
where a kind has named splits.

Training reads the whole training part on every process: `Splits.train` is a
`ProcessShard`, this process's share for inspection and evaluation, whose
`.full` is the whole training part in its global order (the same sequence on
every process, whatever the process count). `pipeline.TrainBatches` shuffles
`.full` and reads its process's slice of each global batch, so the training
stream is a function of the seed and the step only, not of the process count.
Validation and test stay per-process shards (evaluation pads them).

Kinds (dataset.name):
* 'synthetic': the embedded synthetic_shapes TFDS dataset (synthetic.py).
* 'tfds:<name>': a TFDS dataset prepared as array_record; the label is
  dataset.label_key (a ClassLabel, or a sequence of them: multi-label).
* 'imagefolder:<dir>': ``<dir>/<split>/<class>/<image>``; classes are the
  sorted train subdirectories.
* 'attrfolder:<dir>': multi-label attributes (PETA, PA-100k, ...)::

      <dir>/images/...          the images, in any subfolders
      <dir>/<split>.csv         one per split, e.g. train.csv and test.csv

  Each CSV has a header ``image,<attr1>,<attr2>,...`` (the 'image' column may
  be anywhere) and rows ``relative/path.jpg,0,1,...``: a path relative to
  ``<dir>/images`` (neither absolute nor leaving it) and one 0/1 value per
  attribute. Train and test list the
  same attribute columns in the same order; they are the class names.
* 'tinyimagenet:<dir>': the Tiny ImageNet (CS231n) layout, ``<dir>`` being
  the tiny-imagenet-200 folder (or its parent): ``wnids.txt``, ``words.txt``,
  ``train/<wnid>/images/*.JPEG`` with ``train/<wnid>/<wnid>_boxes.txt`` (lines
  ``file x0 y0 x1 y1``), ``val/images/*.JPEG`` with ``val/val_annotations.txt``
  (lines ``file wnid x0 y0 x1 y1``). Tiny ImageNet's labelled 'val' set is
  camjax's test split (its 'test' set has no labels). Classes are the sorted
  wnids of wnids.txt, named by the first synonym in words.txt; val images of
  classes not in wnids.txt are skipped, so editing wnids.txt makes a subset.

Ground-truth boxes (see boxes.py): a source example may carry 'boxes', float32
(M, 4) (x0, y0, x1, y1) inclusive pixel indices of the source image, and the
source then has ``has_boxes = True``. Providers: synthetic (its one 'bbox'),
TFDS datasets with the feature dataset.box_key (a BBoxFeature, normalized
(ymin, xmin, ymax, xmax), or a pixel Tensor as synthetic stores), tinyimagenet,
and imagefolder with dataset.boxes_file: a CSV named so in each split
directory, lines ``relative/path,x0,y0,x1,y1`` (path relative to the split
directory, several lines per image allowed, images without a line have no
box, optional header ``image,x0,y0,x1,y1``, '#' comments). The test split's
file must exist; the train split's is optional (validation has boxes only
with it). Every box must lie inside its image (checked against the image
header when the dataset is opened).

Bad data (problems.py): opening a file-based dataset stops at its first
problem, naming the file (and line); `--mode=check` (check.py) lists them
all. dataset.on_bad_image='skip' replaces an undecodable image instead
(folders.ImageFolderSource).

Label noise (dataset.label_noise, noise.py) corrupts the training part only,
after the validation carve; Splits.train_label_noise records it.
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from camjax.data import folders
from camjax.data.boxes import normalized_to_pixels
from camjax.data.folders import IMAGE_SUFFIXES, ImageFolderSource  # noqa: F401 (re-exported)
from camjax.data.noise import training_label_noise
from camjax.errors import CamjaxError, ConfigError

KINDS = ('synthetic', 'tfds', 'imagefolder', 'attrfolder', 'tinyimagenet')
_DIR_KINDS = ('imagefolder', 'attrfolder', 'tinyimagenet')


class ProcessShard(Sequence):
    """Examples `indices` of `full`: one process's share of a split that every
    process can also read whole (`full`, what training reads). Undecodable
    images (dataset.on_bad_image='skip') are replaced within `full`, so an
    example is the same whatever the process count."""

    def __init__(self, full: Sequence, indices):
        self.full, self.indices = full, np.asarray(indices, np.int64)
        if hasattr(full, 'has_boxes'):
            self.has_boxes = full.has_boxes
        if hasattr(full, 'stored_format'):  # image files' header reader (summary.py)
            self.stored_format = lambda index: full.stored_format(int(self.indices[index]))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.full[int(self.indices[index])]


@dataclasses.dataclass(frozen=True)
class Splits:
    # This process's share of the training part; `train.full` is all of it,
    # identical on every process (what TrainBatches reads).
    train: ProcessShard
    val: Sequence | None
    test: Sequence
    num_classes: int
    class_names: tuple[str, ...]
    # Global sizes (all processes), which every process needs to agree on batch counts.
    sizes: dict
    multilabel: bool = False
    # Multi-label only: float64 positive rate p_o of each class over the whole
    # training part, all processes (HNC paper, Eq. 8), identical on every process.
    positive_rate: np.ndarray | None = None
    # With dataset.label_noise: {'noisy', 'original': int32 (N,), 'flipped':
    # bool (N,)} over the whole training part (N = sizes['train'], all
    # processes) in its global order, which is `train.full`'s -- TFDS: example
    # i of train[:N], each process's `train` holding a contiguous block; file
    # kinds: the train files in listing order, process p's `train` holding
    # positions p::process_count. `train` yields the noisy labels; val and
    # test stay clean.
    train_label_noise: dict | None = None


def parse_dataset_name(name: str) -> tuple[str, str]:
    kind, _, arg = name.partition(':')
    if kind not in KINDS or (kind == 'synthetic') == bool(arg):
        raise ConfigError(f"dataset.name={name!r} must be 'synthetic', 'tfds:<name>', "
                          "'imagefolder:<dir>', 'attrfolder:<dir>' or 'tinyimagenet:<dir>'")
    return kind, arg


def check_dataset_name(name: str) -> None:
    """Cheap checks that need no data read: the kind, and directory paths."""
    kind, arg = parse_dataset_name(name)
    if kind in _DIR_KINDS and not epath.Path(arg).is_dir():
        raise ConfigError(f'dataset.name: {kind} directory {arg!r} does not exist')


def default_data_dir() -> str:
    return os.environ.get('CAMJAX_DATA_DIR') or os.path.expanduser('~/.cache/camjax/tfds')


def _carve(n: int, val_fraction: float) -> int:
    return int(round(n * val_fraction))


# ---------------------------------------------------------------------------
# TFDS (array_record) sources, including the embedded synthetic dataset.
# ---------------------------------------------------------------------------
def _tfds_builder(kind, arg, cfg, data_dir):
    if kind == 'synthetic':
        from camjax.data import synthetic
        return synthetic.prepare(data_dir, image_size=cfg.image_size, **cfg.synthetic)
    hint = (f'prepare it with `tfds build {arg} --data_dir={data_dir} '
            "--file_format=array_record` (pip install '.[prepare]' if its builder needs "
            'TensorFlow)')
    try:
        builder = tfds.builder(arg, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise CamjaxError(f'dataset tfds:{arg} is not prepared under {data_dir} and TFDS '
                          f'has no builder for it; {hint}') from None
    if not builder.is_prepared():
        raise CamjaxError(f'dataset tfds:{arg} is not prepared under {data_dir}; {hint}')
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise CamjaxError(f'dataset tfds:{arg} is stored as {builder.info.file_format.value}; '
                          'camjax reads array_record (rebuild with --file_format=array_record)')
    return builder


def _lookup(tree, key: str):
    for part in key.split('/'):
        tree = tree[part]
    return tree


class _Relabeled(Sequence):
    """A TFDS source whose examples gain 'label', read from `key` and
    converted (or taken from `labels`, e.g. noisy ones, by index), and
    'boxes' from `box_key` when given; other features (e.g. the synthetic
    'bbox') pass through."""

    def __init__(self, source, key: str, to_label, *, labels=None, box_key: str = '',
                 box_format: str = ''):
        self._source, self._key, self._to_label = source, key, to_label
        self._labels = labels
        self._box_key, self._box_format = box_key, box_format
        self.has_boxes = bool(box_key)

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        example = self._source[index]
        label = (self._to_label(_lookup(example, self._key)) if self._labels is None
                 else self._labels[index])
        example = {**example, 'label': label}
        if self._box_key:
            raw = np.asarray(_lookup(example, self._box_key))
            if self._box_format == 'normalized':
                h, w = np.shape(example['image'])[:2]
                example['boxes'] = normalized_to_pixels(raw, height=h, width=w)
            else:
                example['boxes'] = raw.astype(np.float32).reshape(-1, 4)
        return example


def _label_feature(features, key: str, name: str):
    """(ClassLabel feature, multilabel) for `key`: a ClassLabel is single-label;
    one inside a Sequence anywhere on the path (e.g. COCO's objects/label) is
    multi-label."""
    feature, multilabel = features, False
    try:
        for part in key.split('/'):
            if isinstance(feature, tfds.features.Sequence):
                feature, multilabel = feature.feature, True
            feature = feature[part]
    except (KeyError, TypeError):
        raise CamjaxError(f'dataset {name} has no label feature {key!r} '
                          '(set dataset.label_key)') from None
    if isinstance(feature, tfds.features.Sequence):
        feature, multilabel = feature.feature, True
    if not isinstance(feature, tfds.features.ClassLabel):
        raise CamjaxError(f'dataset {name}: feature {key!r} is neither a ClassLabel nor a '
                          'sequence of ClassLabel')
    return feature, multilabel


def _box_format(features, key: str, name: str) -> str:
    """'normalized' (BBoxFeature), 'pixels' (an int/float Tensor of shape (4,)
    or (None, 4), read as inclusive (x0, y0, x1, y1) like synthetic's 'bbox'),
    or '' when the dataset has no feature `key` (or key is '')."""
    if not key:
        return ''
    feature = features
    try:
        for part in key.split('/'):
            if isinstance(feature, tfds.features.Sequence):
                feature = feature.feature
            feature = feature[part]
    except (KeyError, TypeError):
        return ''
    if isinstance(feature, tfds.features.Sequence):
        feature = feature.feature
    if isinstance(feature, tfds.features.BBoxFeature):
        return 'normalized'
    if isinstance(feature, tfds.features.Tensor) and tuple(feature.shape)[-1:] == (4,) and \
            len(feature.shape) <= 2:
        return 'pixels'
    raise CamjaxError(f'dataset {name}: feature {key!r} (dataset.box_key) is neither a '
                      'BBoxFeature nor a (4,) pixel box tensor')


def _scan(source, key: str, to_label) -> np.ndarray:
    """All labels of a source opened with the image left encoded."""
    out, step = [], 1024
    for start in range(0, len(source), step):
        idx = list(range(start, min(start + step, len(source))))
        examples = (source.__getitems__(idx) if hasattr(source, '__getitems__')
                    else [source[i] for i in idx])
        out += [to_label(_lookup(e, key)) for e in examples]
    return np.asarray(out)


def _even_block(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of this process in tfds.even_splits(n examples,
    process_count) without drop_remainder: the first n % count get one more."""
    base, extra = divmod(n, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


def _tfds_splits(kind, arg, cfg, data_dir, process_index, process_count):
    builder = _tfds_builder(kind, arg, cfg, data_dir)
    features = builder.info.features
    for split in (cfg.train_split, cfg.test_split):
        if split not in builder.info.splits:
            raise CamjaxError(f'dataset {cfg.name} has no split {split!r} '
                              f'(it has {sorted(builder.info.splits)})')
    if 'image' not in features:
        raise CamjaxError(f'dataset {cfg.name} has no image feature ({sorted(features)})')
    label_feature, multilabel = _label_feature(features, cfg.label_key, cfg.name)
    box_format = _box_format(features, cfg.box_key, cfg.name)
    box_key = cfg.box_key if box_format else ''
    num_classes = label_feature.num_classes
    if multilabel:
        def to_label(indices):
            return np.bincount(np.asarray(indices, np.int64), minlength=num_classes).clip(
                0, 1).astype(np.float32)
    else:
        to_label = np.int32
    n = builder.info.splits[cfg.train_split].num_examples
    n_val = _carve(n, cfg.val_fraction)
    n_test = builder.info.splits[cfg.test_split].num_examples
    train_split = f'{cfg.train_split}[:{n - n_val}]'

    def open_split(split, labels=None, *, whole=False):
        if not whole:
            split = tfds.split_for_jax_process(split, process_index=process_index,
                                               process_count=process_count)
        return _Relabeled(builder.as_data_source(split=split), cfg.label_key, to_label,
                          labels=labels, box_key=box_key, box_format=box_format)

    positive_rate = noise = None
    if multilabel or cfg.label_noise != 'none':
        # Labels only: images are left encoded, so the scan is cheap.
        labels = _scan(builder.as_data_source(
            split=train_split, decoders={'image': tfds.decode.SkipDecoding()}),
            cfg.label_key, to_label)
        if multilabel:
            positive_rate = labels.mean(axis=0, dtype=np.float64)
        noise = training_label_noise(cfg, labels, num_classes=num_classes,
                                     multilabel=multilabel)
    # Training reads all of train[:N] on every process; this process's share
    # is the contiguous block that tfds.split_for_jax_process would give it.
    full = open_split(train_split, None if noise is None else noise['noisy'], whole=True)
    train = ProcessShard(full, range(*_even_block(n - n_val, process_index, process_count)))
    return Splits(
        train=train,
        val=open_split(f'{cfg.train_split}[{n - n_val}:]') if n_val else None,
        test=open_split(cfg.test_split),
        num_classes=num_classes, class_names=tuple(label_feature.names),
        sizes={'train': n - n_val, 'val': n_val, 'test': n_test},
        multilabel=multilabel, positive_rate=positive_rate, train_label_noise=noise)


# ---------------------------------------------------------------------------
# File-based kinds (folders.py): imagefolder, attrfolder, tinyimagenet.
# ---------------------------------------------------------------------------
def _file_splits(train, test, class_names, multilabel, cfg, process_index, process_count):
    n = len(train.files)
    # Files are listed class by class, so the validation carve is a seeded
    # permutation rather than a contiguous tail (which would be one class).
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    n_val = _carve(n, cfg.val_fraction)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    train_labels = train.labels[train_idx]
    noise = training_label_noise(cfg, train_labels, num_classes=len(class_names),
                                 multilabel=multilabel)

    def shard(listing, idx, labels, *, whole=False):
        pos = np.arange(len(idx))
        if not whole:
            pos = pos[process_index::process_count]
        boxes = None if listing.boxes is None else [listing.boxes[i] for i in idx[pos]]
        return ImageFolderSource([listing.files[i] for i in idx[pos]], labels[pos], boxes,
                                 on_bad_image=cfg.on_bad_image)

    # Training reads the whole training part on every process (an undecodable
    # image is then replaced by the same file whatever the process count);
    # this process's share is positions process_index::process_count of it.
    full = shard(train, train_idx, train_labels if noise is None else noise['noisy'],
                 whole=True)
    test_idx = np.arange(len(test.files))
    return Splits(
        train=ProcessShard(full, np.arange(len(train_idx))[process_index::process_count]),
        val=shard(train, val_idx, train.labels[val_idx]) if n_val else None,
        test=shard(test, test_idx, test.labels),
        num_classes=len(class_names), class_names=tuple(class_names),
        sizes={'train': len(train_idx), 'val': n_val, 'test': len(test.files)},
        multilabel=multilabel,
        positive_rate=train_labels.mean(axis=0, dtype=np.float64) if multilabel else None,
        train_label_noise=noise)


def open_splits(cfg, *, process_index: int = 0, process_count: int = 1) -> Splits:
    """Open this process's share of the train / val / test splits of `cfg.name`
    (and, as `train.full`, the whole training part)."""
    kind, arg = parse_dataset_name(cfg.name)
    if kind in folders.LISTERS:
        train, test, class_names, multilabel = folders.LISTERS[kind](arg, cfg)
        return _file_splits(train, test, class_names, multilabel, cfg, process_index,
                            process_count)
    data_dir = cfg.data_dir or default_data_dir()
    return _tfds_splits(kind, arg, cfg, data_dir, process_index, process_count)
