"""File-based datasets: image folders, attribute CSVs and Tiny ImageNet.

Each `list_*` function reads only directory listings and small text files and
returns a `Listing` per split; sources.py carves validation, adds label noise,
shards across processes and wraps the files in `ImageFolderSource`. The file
formats are described in sources.py's docstring.
"""

import csv
import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from camjax.data.boxes import check_box
from camjax.errors import CamjaxError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


class ImageFolderSource(Sequence):
    """Random access over image files; a file PIL cannot read is a CamjaxError.

    labels: (N,) class indices or (N, K) multi-hot rows. boxes: None, or per
    file a float32 (m, 4) array of (x0, y0, x1, y1) inclusive pixel boxes,
    returned as the example's 'boxes'."""

    def __init__(self, files: Sequence[str], labels, boxes: Sequence | None = None):
        labels = np.asarray(labels)
        self._files = list(files)
        self._labels = labels.astype(np.int32 if labels.ndim <= 1 else np.float32)
        self._boxes = None if boxes is None else list(boxes)
        self.has_boxes = boxes is not None

    def __len__(self):
        return len(self._files)

    def stored_format(self, index: int) -> tuple[int, int, int]:
        """(height, width, channels) of a file as stored, from its header
        (decoding converts every image to RGB)."""
        path = self._files[index]
        try:
            with Image.open(path) as img:
                return img.height, img.width, len(img.getbands())
        except (OSError, ValueError, SyntaxError) as e:
            raise CamjaxError(f'corrupt image {path}: {e}') from None

    def __getitem__(self, index):
        path = self._files[index]
        try:
            with Image.open(path) as img:
                image = np.asarray(img.convert('RGB'))
        except (OSError, ValueError, SyntaxError) as e:
            raise CamjaxError(f'corrupt image {path}: {e}') from None
        example = {'image': image, 'label': self._labels[index]}
        if self._boxes is not None:
            example['boxes'] = self._boxes[index]
        return example


@dataclasses.dataclass
class Listing:
    """One split's files, labels ((N,) int or (N, K) multi-hot) and optional
    per-file source boxes."""
    files: list
    labels: np.ndarray
    boxes: list | None = None


def _no_boxes():
    return np.zeros((0, 4), np.float32)


def _stack_boxes(per_file: dict, files) -> list:
    return [np.stack(per_file[f]) if f in per_file else _no_boxes() for f in files]


# ---------------------------------------------------------------------------
# imagefolder:<dir>
# ---------------------------------------------------------------------------
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


def read_boxes_csv(path: str, split_dir: str, files) -> list:
    """`path`'s lines 'relative/path,x0,y0,x1,y1' (relative to split_dir) ->
    per file of `files` its (m, 4) boxes, m = 0 for a file with no line."""
    index = {os.path.relpath(f, split_dir).replace(os.sep, '/'): f for f in files}
    per_file = {}
    with open(path, newline='') as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            row = [v.strip() for v in row]
            if not row or not row[0] or row[0].startswith('#'):
                continue
            if lineno == 1 and row[0] == 'image':  # optional header
                continue
            where = f'{path}:{lineno}'
            if len(row) != 5:
                raise CamjaxError(f'{where}: expected relative/path,x0,y0,x1,y1, got {row}')
            if row[0] not in index:
                raise CamjaxError(f'{where}: {row[0]!r} is not an image of {split_dir!r}')
            per_file.setdefault(index[row[0]], []).append(check_box(row[1:], where))
    return _stack_boxes(per_file, files)


def list_imagefolder(root, cfg):
    files, labels, class_names = _list_folder(root, cfg.train_split)
    test_files, test_labels, _ = _list_folder(root, cfg.test_split, class_names)
    train, test = Listing(files, labels), Listing(test_files, test_labels)
    if cfg.boxes_file:
        for split, listing in ((cfg.train_split, train), (cfg.test_split, test)):
            split_dir = os.path.join(root, split)
            path = os.path.join(split_dir, cfg.boxes_file)
            if os.path.isfile(path):
                listing.boxes = read_boxes_csv(path, split_dir, listing.files)
            elif split == cfg.test_split:  # the split localization is measured on
                raise CamjaxError(f'dataset.boxes_file: {path} does not exist')
    return train, test, tuple(class_names), False


# ---------------------------------------------------------------------------
# attrfolder:<dir>
# ---------------------------------------------------------------------------
def _read_attr_csv(root, split):
    path = os.path.join(root, f'{split}.csv')
    if not os.path.isfile(path):
        raise CamjaxError(f'attrfolder {root!r} has no {split}.csv (dataset split {split!r})')
    with open(path, newline='') as f:
        rows = [(n, [v.strip() for v in r]) for n, r in enumerate(csv.reader(f), start=1)
                if any(v.strip() for v in r)]
    if not rows:
        raise CamjaxError(f'{path} is empty')
    header = rows[0][1]
    if 'image' not in header:
        raise CamjaxError(f'{path}: the header has no "image" column ({header[:5]}...)')
    col = header.index('image')
    names = tuple(h for i, h in enumerate(header) if i != col)
    if not names:
        raise CamjaxError(f'{path}: the header has no attribute columns')
    if len(set(names)) != len(names) or '' in names:
        raise CamjaxError(f'{path}: attribute names must be distinct and non-empty')
    files, labels, missing = [], [], []
    images = os.path.join(root, 'images')
    for lineno, row in rows[1:]:
        where = f'{path}:{lineno}'
        if len(row) != len(header):
            raise CamjaxError(f'{where}: {len(row)} fields, the header has {len(header)}')
        values = row[:col] + row[col + 1:]
        bad = [(n, v) for n, v in zip(names, values, strict=True) if v not in ('0', '1')]
        if bad:
            raise CamjaxError(f'{where}: attribute {bad[0][0]!r} is {bad[0][1]!r}; '
                              'values must be 0 or 1')
        file = os.path.join(images, row[col])
        if not os.path.isfile(file):
            missing.append(file)
        files.append(file)
        labels.append([v == '1' for v in values])
    if not files:
        raise CamjaxError(f'{path} lists no images')
    if missing:
        raise CamjaxError(f'{path}: {len(missing)} listed image(s) do not exist, '
                          f'e.g. {missing[0]}')
    return files, np.asarray(labels, np.float32), names


def list_attrfolder(root, cfg):
    files, labels, names = _read_attr_csv(root, cfg.train_split)
    test_files, test_labels, test_names = _read_attr_csv(root, cfg.test_split)
    if test_names != names:
        raise CamjaxError(f'attrfolder {root!r}: {cfg.test_split}.csv has attribute columns '
                          f'{list(test_names)}, {cfg.train_split}.csv has {list(names)}')
    return Listing(files, labels), Listing(test_files, test_labels), names, True


# ---------------------------------------------------------------------------
# tinyimagenet:<dir>
# ---------------------------------------------------------------------------
def tinyimagenet_root(arg: str) -> str:
    for root in (arg, os.path.join(arg, 'tiny-imagenet-200')):
        if os.path.isfile(os.path.join(root, 'wnids.txt')):
            return root
    raise CamjaxError(f'tinyimagenet {arg!r} has no wnids.txt (nor tiny-imagenet-200/wnids.txt)')


def _read_lines(path):
    with open(path) as f:
        return [(n, line.split()) for n, line in enumerate(f, start=1) if line.strip()]


def _class_names(root, wnids):
    """First synonym from words.txt ('n01443537<TAB>goldfish, Carassius
    auratus' -> 'goldfish'), the wnid where words.txt lacks it, and the wnid
    appended where two classes would share a name."""
    words = {}
    path = os.path.join(root, 'words.txt')
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                wnid, _, text = line.rstrip('\n').partition('\t')
                words[wnid] = text.split(',')[0].strip()
    names = [words.get(w) or w for w in wnids]
    return tuple(f'{n} ({w})' if names.count(n) > 1 else n
                 for n, w in zip(names, wnids, strict=True))


def list_tinyimagenet(arg, cfg):
    del cfg  # fixed layout: train/ is the train split, the labelled val/ the test split
    root = tinyimagenet_root(arg)
    wnids = sorted({p[0] for _, p in _read_lines(os.path.join(root, 'wnids.txt'))})
    label_of = {w: i for i, w in enumerate(wnids)}
    files, labels, boxes = [], [], []
    for label, wnid in enumerate(wnids):
        image_dir = os.path.join(root, 'train', wnid, 'images')
        if not os.path.isdir(image_dir):
            raise CamjaxError(f'tinyimagenet {root!r}: class {wnid} of wnids.txt has no '
                              f'{image_dir}')
        names = sorted(f for f in os.listdir(image_dir) if f.lower().endswith(IMAGE_SUFFIXES))
        box_path = os.path.join(root, 'train', wnid, f'{wnid}_boxes.txt')
        if not os.path.isfile(box_path):
            raise CamjaxError(f'tinyimagenet {root!r}: {box_path} does not exist')
        per_file, known = {}, set(names)
        for lineno, parts in _read_lines(box_path):
            where = f'{box_path}:{lineno}'
            if len(parts) != 5 or parts[0] not in known:
                raise CamjaxError(f'{where}: expected <image of {image_dir}> x0 y0 x1 y1, '
                                  f'got {parts}')
            per_file.setdefault(parts[0], []).append(check_box(parts[1:], where))
        files += [os.path.join(image_dir, n) for n in names]
        labels += [label] * len(names)
        boxes += _stack_boxes(per_file, names)
    ann_path = os.path.join(root, 'val', 'val_annotations.txt')
    if not os.path.isfile(ann_path):
        raise CamjaxError(f'tinyimagenet {root!r}: {ann_path} does not exist')
    val = {}  # file -> (label, [boxes]), in annotation order
    for lineno, parts in _read_lines(ann_path):
        where = f'{ann_path}:{lineno}'
        if len(parts) != 6:
            raise CamjaxError(f'{where}: expected file wnid x0 y0 x1 y1, got {parts}')
        if parts[1] not in label_of:  # a class left out of wnids.txt: a subset
            continue
        label, file_boxes = val.setdefault(parts[0], (label_of[parts[1]], []))
        if label != label_of[parts[1]]:
            raise CamjaxError(f'{where}: {parts[0]} was listed with another class before')
        file_boxes.append(check_box(parts[2:], where))
    val_files = [os.path.join(root, 'val', 'images', f) for f in val]
    missing = [f for f in val_files if not os.path.isfile(f)]
    if missing:
        raise CamjaxError(f'{ann_path}: {len(missing)} listed image(s) do not exist, '
                          f'e.g. {missing[0]}')
    if not files or not val_files:
        raise CamjaxError(f'tinyimagenet {root!r} has no {"train" if not files else "val"} images')
    test = Listing(val_files, np.asarray([lb for lb, _ in val.values()]),
                   [np.stack(b) for _, b in val.values()])
    return Listing(files, np.asarray(labels), boxes), test, _class_names(root, wnids), False
