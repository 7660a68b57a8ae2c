"""File-based datasets: image folders, attribute CSVs and Tiny ImageNet.

Each `list_*` function reads directory listings, small text files and, for
boxes, image headers, and returns a `Listing` per split; sources.py carves
validation, adds label noise, shards across processes and wraps the files in
`ImageFolderSource`. The file formats are described in sources.py's
docstring. The listings' per-item checks report to a `Problems`
(problems.py): opening stops at the first, `--mode=check` (check.py) lists
them all.

Every file-system call goes through `etils.epath`, so a data dir may be on an
object store (`gs://...`); file names are joined as strings (os.path.join
only concatenates, which is right for a URI too).
"""

import concurrent.futures
import csv
import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from camjax.data.boxes import check_box, check_box_inside
from camjax.data.problems import (
    BAD_ATTRIBUTE_VALUE,
    BAD_IMAGE_PATH,
    BAD_LINE,
    CORRUPT_IMAGE,
    EMPTY_CLASS,
    MISSING_FILE,
    RAISE_FIRST,
    DataProblem,
    Problems,
)
from camjax.errors import CamjaxError

try:  # optional: a faster JPEG decoder (decode_image); PIL reads everything without it
    import simplejpeg
except ImportError:
    simplejpeg = None

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
# What PIL raises for a file it cannot read (truncated, empty, not an image, a bomb).
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_JPEG_START = b'\xff\xd8\xff'  # SOI marker and the first marker's 0xff
# JPEG colour spaces simplejpeg turns into RGB exactly as PIL's convert('RGB')
# does; CMYK and YCCK (Adobe) files go to PIL, whose inversion handling differs.
_FAST_COLORSPACES = ('YCbCr', 'Gray', 'RGB')


def _read_image(path: str, read, fast=None):
    """read(the opened PIL image); a DataProblem naming the file if PIL cannot.
    `fast(file) -> pixels or None`, when given, is tried first; on None the
    file is rewound and PIL reads it as before, so PIL alone decides what is
    corrupt and its error message is unchanged."""
    try:
        with epath.Path(path).open('rb') as f:
            if fast is not None:
                pixels = fast(f)
                if pixels is not None:
                    return pixels
                f.seek(0)
            with Image.open(f) as img:
                return read(img)
    except _UNREADABLE as e:
        raise DataProblem(CORRUPT_IMAGE, f'corrupt image {path}: {e}') from None


def _fast_jpeg(f) -> np.ndarray | None:
    """A baseline or progressive 8-bit JPEG's pixels as uint8 RGB through
    simplejpeg (libjpeg-turbo in one C call, the GIL released; ~5x PIL's
    Image.open + convert on 64x64 files, mostly PIL's per-file Python
    overhead), or None for PIL to read instead: simplejpeg not installed, not
    a JPEG, CMYK/YCCK, above PIL's decompression-bomb limit, or anything
    libjpeg-turbo warns about or refuses (strict=True: truncated or corrupt
    data). Pixels equal PIL's: both run libjpeg-turbo's default (islow) IDCT
    and fancy upsampling -- equal on all 110,000 Tiny ImageNet JPEGs
    (bench/jpeg_decoders.py)."""
    if simplejpeg is None:
        return None
    head = f.read(len(_JPEG_START))
    if head != _JPEG_START:
        return None
    data = head + f.read()
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        limit = Image.MAX_IMAGE_PIXELS
        if colorspace not in _FAST_COLORSPACES or (limit and height * width > limit):
            return None
        return simplejpeg.decode_jpeg(data, colorspace='RGB', strict=True)
    except ValueError:
        return None


def decode_image(path: str) -> np.ndarray:
    """The file's pixels as uint8 RGB (H, W, 3): the one definition of a
    decodable image, for training, evaluation and --mode=check. What PIL
    cannot read is corrupt; JPEGs take simplejpeg's faster path when it is
    installed (same pixels, `_fast_jpeg`)."""
    return _read_image(path, lambda img: np.asarray(img.convert('RGB')), fast=_fast_jpeg)


def read_header(path: str) -> tuple[int, int, int]:
    """(height, width, channels) of a file as stored, from its header only."""
    return _read_image(path, lambda img: (img.height, img.width, len(img.getbands())))


class ImageFolderSource(Sequence):
    """Random access over image files.

    labels: (N,) class indices or (N, K) multi-hot rows. boxes: None, or per
    file a float32 (m, 4) array of (x0, y0, x1, y1) inclusive pixel boxes,
    returned as the example's 'boxes'. Every example carries 'bad_image', a
    uint8 that is 1 when its file could not be decoded and was replaced.

    on_bad_image: 'error' -- an undecodable file is a CamjaxError naming it;
    'skip' -- it is replaced by the next decodable file in index order
    (wrapping around) with that file's label and boxes, so an example is a
    pure function of its index and a resumed run sees the same batches."""

    def __init__(self, files: Sequence[str], labels, boxes: Sequence | None = None, *,
                 on_bad_image: str = 'error'):
        labels = np.asarray(labels)
        self._files = list(files)
        self._labels = labels.astype(np.int32 if labels.ndim <= 1 else np.float32)
        self._boxes = None if boxes is None else list(boxes)
        self.has_boxes = boxes is not None
        self._skip_bad = on_bad_image == 'skip'
        self._warned = set()  # indices of bad files already named in a warning

    def __len__(self):
        return len(self._files)

    def stored_format(self, index: int) -> tuple[int, int, int]:
        """(height, width, channels) of a file as stored, from its header
        (decoding converts every image to RGB)."""
        return self._first_readable(index, read_header)[1]

    def __getitem__(self, index):
        used, image = self._first_readable(index, decode_image)
        example = {'image': image, 'label': self._labels[used],
                   'bad_image': np.uint8(used != index)}
        if self._boxes is not None:
            example['boxes'] = self._boxes[used]
        return example

    def _first_readable(self, index: int, read):
        """(i, read(file i)) for i = index or, with on_bad_image='skip' and file
        `index` unreadable, the first i after it (wrapping around) that is."""
        try:
            return index, read(self._files[index])
        except DataProblem as problem:
            if not self._skip_bad:
                raise
            bad = problem
        n = len(self._files)
        for i in ((index + k) % n for k in range(1, n)):
            try:
                value = read(self._files[i])
            except DataProblem:
                continue
            self._warn_once(index, bad, replacement=self._files[i])
            return i, value
        raise CamjaxError(f'dataset.on_bad_image=skip: none of the {n} images of this split '
                          f'can be read, e.g. {bad}')

    def _warn_once(self, index: int, problem: DataProblem, *, replacement: str) -> None:
        if index not in self._warned:
            self._warned.add(index)
            logging.warning('camjax: %s; using %s instead (dataset.on_bad_image=skip)',
                            problem, replacement)


def _isfile(path: str) -> bool:
    return epath.Path(path).is_file()


def _isdir(path: str) -> bool:
    return epath.Path(path).is_dir()


@dataclasses.dataclass
class Listing:
    """One split's files, labels ((N,) int or (N, K) multi-hot) and optional
    per-file source boxes."""
    files: list
    labels: np.ndarray
    boxes: list | None = None


def _image_names(folder: str) -> list[str]:
    return sorted(p.name for p in epath.Path(folder).iterdir()
                  if p.name.lower().endswith(IMAGE_SUFFIXES))


def check_class_has_images(folder: str, names) -> None:
    if not names:
        raise DataProblem(EMPTY_CLASS, f'class folder {folder} has no image files '
                          f'({", ".join(IMAGE_SUFFIXES)})')


def _stack_boxes(per_file: dict, files) -> list:
    """Per file of `files` its (m, 4) float32 boxes, m = 0 for one not in `per_file`."""
    return [np.asarray(per_file.get(f, ()), np.float32).reshape(-1, 4) for f in files]


def _header_size(path: str) -> tuple[int, int] | None:
    """(height, width), or None for a file without a readable header: the
    decode reports it (or skips it), so its boxes are not checked twice."""
    try:
        return read_header(path)[:2]
    except DataProblem:
        return None


def map_in_threads(fn, items, *, threads: int = 4, chunk: int = 1024) -> list:
    """[fn(x) for x in items], in chunks on a few threads: file reads then
    overlap their waits on a slow (network) file system and cost about the
    same as a plain loop on a local one."""
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return [y for ys in pool.map(lambda xs: [fn(x) for x in xs], chunks) for y in ys]


def boxes_inside_images(per_file: dict, problems: Problems, split: str) -> dict:
    """{file: [(box, 'file:line'), ...]} -> {file: [box, ...]}, every box
    checked against its image's size as stored (read from the header)."""
    inside = {}
    for (file, boxes), size in zip(per_file.items(), map_in_threads(_header_size, list(per_file)),
                                   strict=True):
        kept = inside.setdefault(file, [])
        for box, where in boxes:
            with problems.catch(split):
                if size is not None:
                    check_box_inside(box, height=size[0], width=size[1], image=file, where=where)
                kept.append(box)
    return inside


# ---------------------------------------------------------------------------
# imagefolder:<dir>
# ---------------------------------------------------------------------------
def _list_folder(root, split, problems, class_names=None):
    split_dir = os.path.join(root, split)
    if not _isdir(split_dir):
        raise CamjaxError(f'imagefolder {root!r} has no {split!r} subdirectory')
    found = sorted(p.name for p in epath.Path(split_dir).iterdir() if p.is_dir())
    class_names = class_names or tuple(found)
    if not class_names:
        raise CamjaxError(f'imagefolder {split_dir!r} has no class subdirectories')
    unknown = set(found) - set(class_names)
    if unknown:
        raise CamjaxError(f'imagefolder {split_dir!r} has classes not in train: {sorted(unknown)}')
    files, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        if not _isdir(class_dir):  # a split may lack a class altogether
            continue
        names = _image_names(class_dir)
        with problems.catch(split):
            check_class_has_images(class_dir, names)
        files += [os.path.join(class_dir, f) for f in names]
        labels += [label] * len(names)
    if not files:
        raise CamjaxError(f'imagefolder {split_dir!r} contains no images')
    return files, np.asarray(labels), class_names


def read_boxes_csv(path: str, split_dir: str, files, problems: Problems, split: str) -> list:
    """`path`'s lines 'relative/path,x0,y0,x1,y1' (relative to split_dir) ->
    per file of `files` its (m, 4) boxes, m = 0 for a file with no line."""
    index = {f[len(split_dir):].lstrip('/'): f for f in files}  # files are split_dir/...
    per_file = {}  # file -> [(box, where)]
    with epath.Path(path).open() as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            row = [v.strip() for v in row]
            if not row or not row[0] or row[0].startswith('#'):
                continue
            if lineno == 1 and row[0] == 'image':  # optional header
                continue
            where = f'{path}:{lineno}'
            with problems.catch(split):
                if len(row) != 5:
                    raise DataProblem(BAD_LINE, f'{where}: expected relative/path,x0,y0,x1,y1, '
                                      f'got {row}')
                if row[0] not in index:
                    raise DataProblem(BAD_LINE, f'{where}: {row[0]!r} is not an image of '
                                      f'{split_dir!r}')
                per_file.setdefault(index[row[0]], []).append((check_box(row[1:], where), where))
    return _stack_boxes(boxes_inside_images(per_file, problems, split), files)


def list_imagefolder(root, cfg, problems: Problems = RAISE_FIRST):
    files, labels, class_names = _list_folder(root, cfg.train_split, problems)
    test_files, test_labels, _ = _list_folder(root, cfg.test_split, problems, class_names)
    train, test = Listing(files, labels), Listing(test_files, test_labels)
    if cfg.boxes_file:
        for split, listing in ((cfg.train_split, train), (cfg.test_split, test)):
            split_dir = os.path.join(root, split)
            path = os.path.join(split_dir, cfg.boxes_file)
            if _isfile(path):
                listing.boxes = read_boxes_csv(path, split_dir, listing.files, problems, split)
            elif split == cfg.test_split:  # the split localization is measured on
                raise CamjaxError(f'dataset.boxes_file: {path} does not exist')
    return train, test, tuple(class_names), False


# ---------------------------------------------------------------------------
# attrfolder:<dir>
# ---------------------------------------------------------------------------
def attr_image_file(images: str, path: str, where: str) -> str:
    """The file an attrfolder CSV row names: `path` relative to `images`,
    staying inside it, and existing."""
    if os.path.isabs(path):
        raise DataProblem(BAD_IMAGE_PATH, f'{where}: image path {path!r} is absolute; paths '
                          f'are relative to {images}')
    inside = os.path.normpath(path)
    if inside == os.curdir or inside.split(os.sep)[0] == os.pardir:
        raise DataProblem(BAD_IMAGE_PATH, f'{where}: image path {path!r} is not inside {images}')
    file = os.path.join(images, inside)
    if not _isfile(file):
        raise DataProblem(MISSING_FILE, f'{where}: the listed image does not exist: {file}')
    return file


def attr_values(names, values, where: str) -> list[bool]:
    bad = [(n, v) for n, v in zip(names, values, strict=True) if v not in ('0', '1')]
    if bad:
        raise DataProblem(BAD_ATTRIBUTE_VALUE, f'{where}: attribute {bad[0][0]!r} is '
                          f'{bad[0][1]!r}; values must be 0 or 1')
    return [v == '1' for v in values]


def _read_attr_csv(root, split, problems):
    path = os.path.join(root, f'{split}.csv')
    if not _isfile(path):
        raise CamjaxError(f'attrfolder {root!r} has no {split}.csv (dataset split {split!r})')
    with epath.Path(path).open() as f:
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
    files, labels = [], []
    images = os.path.join(root, 'images')
    for lineno, row in rows[1:]:
        where = f'{path}:{lineno}'
        with problems.catch(split):
            if len(row) != len(header):
                raise DataProblem(BAD_LINE, f'{where}: {len(row)} fields, the header has '
                                  f'{len(header)}')
            # Both checked, so that a data check reports both of a row's problems.
            label = problems.checked(split, attr_values, names, row[:col] + row[col + 1:], where)
            file = problems.checked(split, attr_image_file, images, row[col], where)
            if label is not None and file is not None:
                files.append(file)
                labels.append(label)
    if not files:
        raise CamjaxError(f'{path} lists no images')
    return files, np.asarray(labels, np.float32), names


def list_attrfolder(root, cfg, problems: Problems = RAISE_FIRST):
    files, labels, names = _read_attr_csv(root, cfg.train_split, problems)
    test_files, test_labels, test_names = _read_attr_csv(root, cfg.test_split, problems)
    if test_names != names:
        raise CamjaxError(f'attrfolder {root!r}: {cfg.test_split}.csv has attribute columns '
                          f'{list(test_names)}, {cfg.train_split}.csv has {list(names)}')
    return Listing(files, labels), Listing(test_files, test_labels), names, True


# ---------------------------------------------------------------------------
# tinyimagenet:<dir>
# ---------------------------------------------------------------------------
def tinyimagenet_root(arg: str) -> str:
    for root in (arg, os.path.join(arg, 'tiny-imagenet-200')):
        if _isfile(os.path.join(root, 'wnids.txt')):
            return root
    raise CamjaxError(f'tinyimagenet {arg!r} has no wnids.txt (nor tiny-imagenet-200/wnids.txt)')


def _read_lines(path):
    with epath.Path(path).open() as f:
        return [(n, line.split()) for n, line in enumerate(f, start=1) if line.strip()]


def _class_names(root, wnids):
    """First synonym from words.txt ('n01443537<TAB>goldfish, Carassius
    auratus' -> 'goldfish'), the wnid where words.txt lacks it, and the wnid
    appended where two classes would share a name."""
    words = {}
    path = os.path.join(root, 'words.txt')
    if _isfile(path):
        with epath.Path(path).open() as f:
            for line in f:
                wnid, _, text = line.rstrip('\n').partition('\t')
                words[wnid] = text.split(',')[0].strip()
    names = [words.get(w) or w for w in wnids]
    return tuple(f'{n} ({w})' if names.count(n) > 1 else n
                 for n, w in zip(names, wnids, strict=True))


def _tiny_train_class(root, wnid, problems, split):
    """(files, {file: [(box, where)]}) of one class's train/<wnid>/."""
    image_dir = os.path.join(root, 'train', wnid, 'images')
    if not _isdir(image_dir):
        raise DataProblem(MISSING_FILE, f'tinyimagenet {root!r}: class {wnid} of wnids.txt has '
                          f'no {image_dir}')
    names = _image_names(image_dir)
    check_class_has_images(image_dir, names)
    box_path = os.path.join(root, 'train', wnid, f'{wnid}_boxes.txt')
    if not _isfile(box_path):
        raise DataProblem(MISSING_FILE, f'tinyimagenet {root!r}: {box_path} does not exist')
    per_file, known = {}, set(names)
    for lineno, parts in _read_lines(box_path):
        where = f'{box_path}:{lineno}'
        with problems.catch(split):
            if len(parts) != 5 or parts[0] not in known:
                raise DataProblem(BAD_LINE, f'{where}: expected <image of {image_dir}> '
                                  f'x0 y0 x1 y1, got {parts}')
            per_file.setdefault(os.path.join(image_dir, parts[0]), []).append(
                (check_box(parts[1:], where), where))
    return [os.path.join(image_dir, n) for n in names], per_file


def _tiny_val(root, label_of, problems, split):
    """{file: (label, [(box, where)])} from val/val_annotations.txt, in its order."""
    ann_path = os.path.join(root, 'val', 'val_annotations.txt')
    if not _isfile(ann_path):
        raise CamjaxError(f'tinyimagenet {root!r}: {ann_path} does not exist')
    val = {}
    for lineno, parts in _read_lines(ann_path):
        where = f'{ann_path}:{lineno}'
        with problems.catch(split):
            if len(parts) != 6:
                raise DataProblem(BAD_LINE, f'{where}: expected file wnid x0 y0 x1 y1, got '
                                  f'{parts}')
            if parts[1] not in label_of:  # a class left out of wnids.txt: a subset
                continue
            file = os.path.join(root, 'val', 'images', parts[0])
            if file not in val and not _isfile(file):
                raise DataProblem(MISSING_FILE, f'{where}: the listed image does not exist: '
                                  f'{file}')
            label, file_boxes = val.setdefault(file, (label_of[parts[1]], []))
            if label != label_of[parts[1]]:
                raise DataProblem(BAD_LINE, f'{where}: {parts[0]} was listed with another '
                                  'class before')
            file_boxes.append((check_box(parts[2:], where), where))
    return val


def list_tinyimagenet(arg, cfg, problems: Problems = RAISE_FIRST):
    # A fixed layout: train/ is the train split, the labelled val/ the test split.
    root = tinyimagenet_root(arg)
    wnids = sorted({p[0] for _, p in _read_lines(os.path.join(root, 'wnids.txt'))})
    label_of = {w: i for i, w in enumerate(wnids)}
    files, labels, per_file = [], [], {}
    for label, wnid in enumerate(wnids):
        with problems.catch(cfg.train_split):
            class_files, class_boxes = _tiny_train_class(root, wnid, problems, cfg.train_split)
            files += class_files
            labels += [label] * len(class_files)
            per_file.update(class_boxes)
    val = _tiny_val(root, label_of, problems, cfg.test_split)
    if not files or not val:
        raise CamjaxError(f'tinyimagenet {root!r} has no {"train" if not files else "val"} images')
    train_boxes = boxes_inside_images(per_file, problems, cfg.train_split)
    val_boxes = boxes_inside_images({f: b for f, (_, b) in val.items()}, problems,
                                    cfg.test_split)
    train = Listing(files, np.asarray(labels), _stack_boxes(train_boxes, files))
    test = Listing(list(val), np.asarray([label for label, _ in val.values()]),
                   _stack_boxes(val_boxes, list(val)))
    return train, test, _class_names(root, wnids), False


LISTERS = {'imagefolder': list_imagefolder, 'attrfolder': list_attrfolder,
           'tinyimagenet': list_tinyimagenet}
