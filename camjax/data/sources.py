"""Dataset sources by name: 'synthetic', 'tfds:<name>', 'imagefolder:<dir>'.

Each resolves to random-access sources (len + getitem -> {'image': uint8 HWC,
'label': int, or a multi-hot float32 (K,) vector for multi-label data}) for
this process's share of the train, validation and test splits. The validation
split is carved from train, so model selection never looks at test.
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from camjax.errors import CamjaxError, ConfigError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
KINDS = ('synthetic', 'tfds', 'imagefolder')


@dataclasses.dataclass(frozen=True)
class Splits:
    train: Sequence
    val: Sequence | None
    test: Sequence
    num_classes: int
    class_names: tuple[str, ...]
    # Global sizes (all processes), which every process needs to agree on batch counts.
    sizes: dict
    multilabel: bool = False
    # Multi-label only: positive rate p_o of each class over the whole training
    # split (HNC paper, Eq. 8), identical on every process.
    positive_rate: np.ndarray | None = None


def parse_dataset_name(name: str) -> tuple[str, str]:
    kind, _, arg = name.partition(':')
    if kind not in KINDS or (kind == 'synthetic') == bool(arg):
        raise ConfigError(f"dataset.name={name!r} must be 'synthetic', 'tfds:<name>' or "
                          "'imagefolder:<dir>'")
    return kind, arg


def check_dataset_name(name: str) -> None:
    """Cheap checks that need no data read: the kind, and imagefolder paths."""
    kind, arg = parse_dataset_name(name)
    if kind == 'imagefolder' and not os.path.isdir(arg):
        raise ConfigError(f'dataset.name: imagefolder directory {arg!r} does not exist')


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
    converted; other features (e.g. the synthetic 'bbox') pass through."""

    def __init__(self, source, key: str, to_label):
        self._source, self._key, self._to_label = source, key, to_label

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        example = self._source[index]
        return {**example, 'label': self._to_label(_lookup(example, self._key))}


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

    def open_split(split):
        return _Relabeled(builder.as_data_source(split=tfds.split_for_jax_process(
            split, process_index=process_index, process_count=process_count)),
            cfg.label_key, to_label)

    positive_rate = None
    if multilabel:  # labels only: images are left encoded, so the scan is cheap
        labels_only = builder.as_data_source(
            split=train_split, decoders={'image': tfds.decode.SkipDecoding()})
        positive_rate = np.mean([to_label(_lookup(labels_only[i], cfg.label_key))
                                 for i in range(len(labels_only))], axis=0)
    return Splits(
        train=open_split(train_split),
        val=open_split(f'{cfg.train_split}[{n - n_val}:]') if n_val else None,
        test=open_split(cfg.test_split),
        num_classes=num_classes, class_names=tuple(label_feature.names),
        sizes={'train': n - n_val, 'val': n_val, 'test': n_test},
        multilabel=multilabel, positive_rate=positive_rate)


# ---------------------------------------------------------------------------
# ImageFolder: <dir>/<split>/<class>/<image>.
# ---------------------------------------------------------------------------
class ImageFolderSource(Sequence):
    """Random access over image files; a file PIL cannot read is a CamjaxError."""

    def __init__(self, files: Sequence[str], labels: Sequence[int]):
        self._files, self._labels = list(files), np.asarray(labels, np.int32)

    def __len__(self):
        return len(self._files)

    def __getitem__(self, index):
        path = self._files[index]
        try:
            with Image.open(path) as img:
                image = np.asarray(img.convert('RGB'))
        except (OSError, ValueError, SyntaxError) as e:
            raise CamjaxError(f'corrupt image {path}: {e}') from None
        return {'image': image, 'label': self._labels[index]}


def _list_folder(root, split, class_names=None):
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise CamjaxError(f'imagefolder {root!r} has no {split!r} subdirectory')
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    class_names = class_names or tuple(found)
    if not class_names:
        raise CamjaxError(f'imagefolder {split_dir!r} has no class subdirectories')
    unknown = set(found) - set(class_names)
    if unknown:
        raise CamjaxError(f'imagefolder {split_dir!r} has classes not in train: {sorted(unknown)}')
    files, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        if not os.path.isdir(class_dir):
            continue
        names = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_SUFFIXES))
        files += [os.path.join(class_dir, f) for f in names]
        labels += [label] * len(names)
    if not files:
        raise CamjaxError(f'imagefolder {split_dir!r} contains no images')
    return files, np.asarray(labels), class_names


def _imagefolder_splits(root, cfg, process_index, process_count):
    files, labels, class_names = _list_folder(root, cfg.train_split)
    test_files, test_labels, _ = _list_folder(root, cfg.test_split, class_names)
    # Files are listed class by class, so the validation carve is a seeded
    # permutation rather than a contiguous tail (which would be one class).
    order = np.random.default_rng(cfg.split_seed).permutation(len(files))
    n_val = _carve(len(files), cfg.val_fraction)
    val_idx, train_idx = order[:n_val], np.sort(order[n_val:])

    def shard(idx, f, y):
        idx = idx[process_index::process_count]
        return ImageFolderSource([f[i] for i in idx], y[idx])

    all_test = np.arange(len(test_files))
    return Splits(
        train=shard(train_idx, files, labels),
        val=shard(np.sort(val_idx), files, labels) if n_val else None,
        test=shard(all_test, test_files, test_labels),
        num_classes=len(class_names), class_names=tuple(class_names),
        sizes={'train': len(train_idx), 'val': n_val, 'test': len(test_files)})


def open_splits(cfg, *, process_index: int = 0, process_count: int = 1) -> Splits:
    """Open this process's share of the train / val / test splits of `cfg.name`."""
    kind, arg = parse_dataset_name(cfg.name)
    if kind == 'imagefolder':
        return _imagefolder_splits(arg, cfg, process_index, process_count)
    data_dir = cfg.data_dir or default_data_dir()
    return _tfds_splits(kind, arg, cfg, data_dir, process_index, process_count)
