"""Ground-truth boxes through the eval pipeline (synthetic, TFDS BBoxFeature,
imagefolder box CSVs, Tiny ImageNet, fake and real) and label noise on the
training part (HNC paper, Sec. 4.5)."""

import io
import os
import re
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import ROOT, small_config
from PIL import Image

from camjax import parallel
from camjax.config.schema import validate
from camjax.data import TrainBatches, eval_batches, noisy_labels, open_splits, synthetic
from camjax.data.boxes import normalized_to_pixels, rescale_boxes
from camjax.data.transforms import to_rgb
from camjax.errors import CamjaxError, ConfigError

TINY_ARCHIVE = os.path.join(ROOT, '..', 'shared', 'data', 'tiny-imagenet-200.tar.gz')


def _sharding():
    return parallel.batch_sharded(parallel.make_mesh())


def _eval(source, cfg, global_size=None, batch=8):
    """All eval batches of `source` concatenated, as numpy."""
    batches = list(eval_batches(source, cfg=cfg, global_batch=batch, sharding=_sharding(),
                                global_size=len(source) if global_size is None else global_size))
    return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}


def _labels_of(source):
    return np.array([int(source[i]['label']) for i in range(len(source))])


# =============================================================================
# Box conventions
# =============================================================================
def test_rescale_boxes_is_identity_at_same_size_and_covers_pixels():
    boxes = np.array([[0, 0, 63, 63], [10, 20, 41, 51], [5, 5, 5, 5]], np.float32)
    np.testing.assert_array_equal(rescale_boxes(boxes, height=64, width=64, size=64), boxes)
    # Halving: pixel i covers [i, i+1) -> [i/2, (i+1)/2), kept where it overlaps.
    np.testing.assert_array_equal(rescale_boxes(boxes, height=64, width=64, size=32),
                                  [[0, 0, 31, 31], [5, 10, 20, 25], [2, 2, 2, 2]])
    # Doubling, and a non-square source (x scale 2, y scale 4).
    np.testing.assert_array_equal(rescale_boxes([[2, 3, 5, 7]], height=16, width=16, size=32),
                                  [[4, 6, 11, 15]])
    np.testing.assert_array_equal(rescale_boxes([[1, 1, 3, 2]], height=10, width=20, size=40),
                                  [[2, 4, 7, 11]])
    # TFDS BBoxFeature: normalized (ymin, xmin, ymax, xmax) -> inclusive pixels.
    np.testing.assert_array_equal(
        normalized_to_pixels([[0.25, 0.5, 0.75, 1.0]], height=8, width=16), [[8, 2, 15, 5]])


@pytest.mark.parametrize('hw,size', [((50, 30), 32), ((24, 24), 64), ((64, 64), 20),
                                     ((20, 44), 50)])
def test_rescaled_box_encloses_the_resized_object(hw, size):
    h, w = hw
    image = np.zeros((h, w, 3), np.uint8)
    box = (7, 5, 17, 13)  # x0, y0, x1, y1 inclusive
    image[box[1]:box[3] + 1, box[0]:box[2] + 1] = 255
    resized = to_rgb(image, size)[..., 0]  # bilinear, as the pipeline resizes
    (x0, y0, x1, y1), = rescale_boxes([box], height=h, width=w, size=size)
    rows, cols = np.nonzero(resized > 127)  # mostly-object pixels
    assert rows.min() >= y0 and rows.max() <= y1 and cols.min() >= x0 and cols.max() <= x1
    # ... and tight: at most one pixel of margin on each side.
    assert rows.min() - y0 <= 1 and y1 - rows.max() <= 1
    assert cols.min() - x0 <= 1 and x1 - cols.max() <= 1


# =============================================================================
# Synthetic boxes in eval batches
# =============================================================================
@pytest.fixture(scope='module')
def synth():
    cfg = small_config().dataset
    return cfg, open_splits(cfg)


def test_synthetic_eval_batches_carry_the_object_box(synth):
    cfg, s = synth
    assert s.test.has_boxes and s.val.has_boxes
    out = _eval(s.test, cfg, batch=48)  # 120 examples -> 144 rows, 24 of padding
    assert out['bbox'].shape == (144, 4, 4) and out['bbox'].dtype == np.int32
    assert (out['bbox'][120:] == -1).all()  # padding examples: no boxes
    assert (out['bbox'][:120, 1:] == -1).all()  # one box per image, then -1 rows
    # The box is the tight box of the class object's pixel mask: re-render
    # test examples (split 1) and find them in the batch by their pixels.
    index = {img.tobytes(): i for i, img in enumerate(out['image'][:120])}
    matched = 0
    for key in range(24):
        image, _, mask = synthetic.render_example(
            np.random.default_rng([0, 1, key]), label=key % synthetic.NUM_CLASSES,
            image_size=32, return_mask=True)
        rows, cols = np.nonzero(mask)
        i = index[image.tobytes()]
        np.testing.assert_array_equal(out['bbox'][i, 0],
                                      [cols.min(), rows.min(), cols.max(), rows.max()])
        matched += 1
    assert matched == 24


def test_synthetic_boxes_follow_a_resize(synth):
    cfg, s = synth
    small = small_config(**{'dataset.image_size': 16}).dataset
    full, half = _eval(s.test, cfg, batch=40)['bbox'], _eval(s.test, small, batch=40)['bbox']
    np.testing.assert_array_equal(half[:, :1], rescale_boxes(
        full[:, 0], height=32, width=32, size=16)[:, None])
    # The source itself stays in source pixels.
    np.testing.assert_array_equal(s.test[0]['boxes'], [s.test[0]['bbox']])


def test_training_batches_carry_no_boxes(synth):
    cfg, s = synth
    batch = next(TrainBatches(s.train, cfg=cfg, global_batch=8, seed=0, sharding=_sharding()))
    assert set(batch) == {'image', 'label'}


def test_too_many_boxes_is_an_error_not_a_truncation():
    class ThreeBoxes:
        has_boxes = True

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {'image': np.zeros((8, 8, 3), np.uint8), 'label': 0,
                    'boxes': np.zeros((3, 4), np.float32)}

    cfg = small_config(**{'dataset.max_boxes': 2}).dataset
    with pytest.raises(CamjaxError, match='3 ground-truth boxes, more than dataset.max_boxes=2'):
        _eval(ThreeBoxes(), cfg, batch=2)
    cfg.max_boxes = 3  # (0, 0, 0, 0) at 8px covers (0, 0, 3, 3) at 32px
    np.testing.assert_array_equal(_eval(ThreeBoxes(), cfg, batch=2)['bbox'],
                                  np.full((2, 3, 4), [0, 0, 3, 3]))


class TinyBoxes(tfds.core.GeneratorBasedBuilder):
    """A TFDS dataset with a normalized BBoxFeature, like CUB or ImageNet."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 16, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=['a', 'b']),
            'bbox': tfds.features.BBoxFeature()}))

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(8), 'test': self._generate_examples(4)}

    def _generate_examples(self, n):
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(buf, format='PNG')
            yield i, {'image': buf.getvalue(), 'label': i % 2,
                      'bbox': tfds.features.BBox(ymin=0.25, xmin=0.5, ymax=0.75, xmax=1.0)}


def test_tfds_bbox_feature_becomes_pixel_boxes(tmp_path):
    TinyBoxes(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
    cfg = small_config(**{'dataset.name': 'tfds:tiny_boxes', 'dataset.data_dir': str(tmp_path),
                          'dataset.image_size': 32, 'dataset.val_fraction': 0.25}).dataset
    s = open_splits(cfg)
    np.testing.assert_array_equal(s.test[0]['boxes'], [[8, 2, 15, 5]])
    # 16 wide -> 32 (x2), 8 high -> 32 (x4).
    np.testing.assert_array_equal(_eval(s.test, cfg, batch=4)['bbox'][:, 0],
                                  [[16, 8, 31, 23]] * 4)
    cfg.box_key = ''
    assert 'bbox' not in _eval(open_splits(cfg).test, cfg, batch=4)


# =============================================================================
# imagefolder box CSVs
# =============================================================================
def _write_folder(root, split, classes=('cat', 'dog'), per_class=3, size=16):
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size, 3), 20 * i, np.uint8)).save(
                root / split / c / f'{i}.png')


@pytest.fixture
def boxed_folder(tmp_path):
    _write_folder(tmp_path, 'train')
    _write_folder(tmp_path, 'test')
    (tmp_path / 'test' / 'boxes.csv').write_text(
        'image,x0,y0,x1,y1\n'
        'cat/0.png,2,3,5,7\n'
        '# a second box for the same image\n'
        'cat/0.png,0,0,15,15\n'
        'dog/2.png,8,8,9,9\n')
    return tmp_path


def _folder_config(root, **overrides):
    return small_config(**{'dataset.name': f'imagefolder:{root}',
                           'dataset.boxes_file': 'boxes.csv', 'dataset.val_fraction': 0.0,
                           **overrides})


def test_imagefolder_boxes_file(boxed_folder):
    config = _folder_config(boxed_folder)
    validate(config, num_devices=1)
    s = open_splits(config.dataset)
    assert s.test.has_boxes and not s.train.has_boxes  # train/ has no boxes.csv
    out = _eval(s.test, config.dataset, batch=6)  # cat/0..2, dog/0..2 at 16px -> 32px
    np.testing.assert_array_equal(out['bbox'][0], [[4, 6, 11, 15], [0, 0, 31, 31],
                                                   [-1] * 4, [-1] * 4])
    assert (out['bbox'][[1, 2, 3, 4]] == -1).all()  # images without a line: no box
    np.testing.assert_array_equal(out['bbox'][5, 0], [16, 16, 19, 19])
    assert 'bbox' not in next(eval_batches(s.train, cfg=config.dataset, global_batch=2,
                                           global_size=6, sharding=_sharding()))


def test_imagefolder_boxes_file_errors(boxed_folder):
    with pytest.raises(ConfigError, match='dataset.boxes_file is only for imagefolder'):
        validate(small_config(**{'dataset.boxes_file': 'boxes.csv'}), num_devices=1)
    path = boxed_folder / 'test' / 'boxes.csv'
    good = path.read_text()
    for line, message in (('cat/9.png,1,1,2,2', "'cat/9.png' is not an image of"),
                          ('cat/1.png,5,1,2,2', 'is not (x0, y0, x1, y1) with'),
                          ('cat/1.png,1,1,2', 'expected relative/path,x0,y0,x1,y1'),
                          ('cat/1.png,a,1,2,2', 'are not numbers')):
        path.write_text(good + line + '\n')
        with pytest.raises(CamjaxError, match=re.escape(f'{path}:6: ') + '.*' +
                           re.escape(message)):
            open_splits(_folder_config(boxed_folder).dataset)
    path.unlink()
    with pytest.raises(CamjaxError, match=f'dataset.boxes_file: {path} does not exist'):
        open_splits(_folder_config(boxed_folder).dataset)


# =============================================================================
# Tiny ImageNet
# =============================================================================
FAKE_WNIDS = ('n03000000', 'n01000000', 'n02000000')  # wnids.txt order is not label order
FAKE_WORDS = {'n01000000': 'goldfish, Carassius auratus', 'n02000000': 'tabby, tabby cat',
              'n03000000': 'reel', 'n09999999': 'unused'}


def _jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(path, format='JPEG')


def _fake_tiny(root, per_class=4):
    """The Tiny ImageNet layout: image i of class c has box (c, i, 30 + c, 40 + i)."""
    root.mkdir()
    (root / 'wnids.txt').write_text('\n'.join(FAKE_WNIDS) + '\n')
    (root / 'words.txt').write_text(''.join(f'{w}\t{t}\n' for w, t in FAKE_WORDS.items()))
    for c, wnid in enumerate(sorted(FAKE_WNIDS)):
        lines = []
        for i in range(per_class):
            _jpeg(root / 'train' / wnid / 'images' / f'{wnid}_{i}.JPEG', 20 * c + 5 * i)
            lines.append(f'{wnid}_{i}.JPEG\t{c}\t{i}\t{30 + c}\t{40 + i}')
        (root / 'train' / wnid / f'{wnid}_boxes.txt').write_text('\n'.join(lines) + '\n')
    ann = []
    for j in range(6):
        wnid = sorted(FAKE_WNIDS)[j % 3]
        _jpeg(root / 'val' / 'images' / f'val_{j}.JPEG', 10 * j)
        ann.append(f'val_{j}.JPEG\t{wnid}\t{j}\t{2 * j}\t{63 - j}\t{60}')
    ann.append('val_6.JPEG\tn09999999\t0\t0\t10\t10')  # a class outside wnids.txt: skipped
    (root / 'val' / 'val_annotations.txt').write_text('\n'.join(ann) + '\n')
    return root


def _tiny_config(root, **overrides):
    return small_config(**{'dataset.name': f'tinyimagenet:{root}',
                           'dataset.val_fraction': 0.25, **overrides})


def test_tinyimagenet_fake_layout(tmp_path):
    _fake_tiny(tmp_path / 'tiny-imagenet-200')
    config = _tiny_config(tmp_path)  # the parent folder works too
    validate(config, num_devices=1)
    s = open_splits(config.dataset)
    assert s.class_names == ('goldfish', 'tabby', 'reel')  # sorted wnids, first synonym
    assert s.sizes == {'train': 9, 'val': 3, 'test': 6}
    np.testing.assert_array_equal(_labels_of(s.test), [0, 1, 2, 0, 1, 2])
    assert sorted(_labels_of(s.train).tolist() + _labels_of(s.val).tolist()) == [0] * 4 + \
        [1] * 4 + [2] * 4
    # Train boxes, read back by label and pixel value (20 c + 5 i).
    for i in range(len(s.train)):
        example = s.train[i]
        c = int(example['label'])
        k = round((float(example['image'].mean()) - 20 * c) / 5)
        np.testing.assert_array_equal(example['boxes'], [[c, k, 30 + c, 40 + k]])
    # Eval boxes at 32px: halved, covering.
    out = _eval(s.test, config.dataset, batch=6)
    np.testing.assert_array_equal(out['bbox'][:, 0], [
        [j // 2, j, -(-(64 - j) // 2) - 1, 30] for j in range(6)])  # x1 = ceil((63-j+1)/2)-1
    assert (out['bbox'][:, 1:] == -1).all()


def test_tinyimagenet_errors(tmp_path):
    root = _fake_tiny(tmp_path / 'tiny')
    with pytest.raises(ConfigError, match='tinyimagenet reads train/'):
        validate(_tiny_config(root, **{'dataset.test_split': 'validation'}), num_devices=1)
    with pytest.raises(ConfigError, match='tinyimagenet directory'):
        validate(_tiny_config(tmp_path / 'missing'), num_devices=1)
    boxes = root / 'train' / 'n02000000' / 'n02000000_boxes.txt'
    boxes.write_text(boxes.read_text() + 'n02000000_9.JPEG\t1\t1\t2\t2\n')
    with pytest.raises(CamjaxError, match=f'{boxes}:5: expected <image of'):
        open_splits(_tiny_config(root).dataset)
    (root / 'wnids.txt').write_text('n01000000\nn04000000\n')
    with pytest.raises(CamjaxError, match='class n04000000 of wnids.txt has no'):
        open_splits(_tiny_config(root).dataset)
    (root / 'wnids.txt').write_text('n01000000\n')  # a one-class subset: val lines skipped
    s = open_splits(_tiny_config(root).dataset)
    assert s.class_names == ('goldfish',) and s.sizes['test'] == 2
    (root / 'val' / 'images' / 'val_3.JPEG').unlink()
    with pytest.raises(CamjaxError, match=f'{root}/val/val_annotations.txt:4: the listed image '
                       'does not exist: .*val_3.JPEG'):
        open_splits(_tiny_config(root).dataset)


@pytest.fixture(scope='module')
def real_tiny(tmp_path_factory):
    """Two classes of the real archive (all 500 train images each, their 100
    val images), read in one streaming pass; wnids.txt trimmed to those two."""
    if not os.path.exists(TINY_ARCHIVE):
        pytest.skip('../shared/data/tiny-imagenet-200.tar.gz is not present')
    root = tmp_path_factory.mktemp('tiny') / 'tiny-imagenet-200'
    keep, val_images, annotations = None, {}, None
    with tarfile.open(TINY_ARCHIVE, 'r|gz') as archive:
        for member in archive:
            name = member.name.removeprefix('tiny-imagenet-200/')
            if not member.isfile():
                continue
            if name == 'wnids.txt':
                keep = archive.extractfile(member).read().decode().split()[:2]
                data = '\n'.join(keep).encode() + b'\n'
            elif name == 'words.txt' or (keep and name.split('/')[:2] in (
                    ['train', keep[0]], ['train', keep[1]])):
                data = archive.extractfile(member).read()
            elif name.startswith('val/images/'):
                val_images[name] = archive.extractfile(member).read()
                continue
            elif name == 'val/val_annotations.txt':
                annotations = data = archive.extractfile(member).read()
            else:
                continue
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    kept_val = [line.split('\t') for line in annotations.decode().splitlines()
                if line.split('\t')[1] in keep]
    for parts in kept_val:
        (root / 'val' / 'images').mkdir(parents=True, exist_ok=True)
        (root / 'val' / 'images' / parts[0]).write_bytes(val_images[f'val/images/{parts[0]}'])
    return root, keep, kept_val


def test_real_tinyimagenet_subset(real_tiny):
    root, keep, kept_val = real_tiny
    assert keep == ['n02124075', 'n04067472']
    config = _tiny_config(root, **{'dataset.image_size': 64, 'dataset.val_fraction': 0.1})
    validate(config, num_devices=1)
    s = open_splits(config.dataset)
    assert s.class_names == ('Egyptian cat', 'reel')
    assert s.sizes == {'train': 900, 'val': 100, 'test': 100}
    assert len(kept_val) == 100
    # Test split = Tiny ImageNet's val, in annotation order, with its boxes.
    out = _eval(s.test, config.dataset, batch=20)
    np.testing.assert_array_equal(out['label'], [keep.index(p[1]) for p in kept_val])
    np.testing.assert_array_equal(out['bbox'][:, 0], [[int(v) for v in p[2:]] for p in kept_val])
    assert (out['bbox'][:, 1:] == -1).all()
    assert out['bbox'][:, 0].min() >= 0 and out['bbox'][:, 0].max() <= 63
    images = out['image'].astype(np.float32)
    assert 40 < images.mean() < 200 and images.std() > 30  # photographs
    # Every training image has its one box from <wnid>_boxes.txt.
    example = s.train[0]
    assert example['image'].shape == (64, 64, 3) and example['boxes'].shape == (1, 4)


# =============================================================================
# Label noise
# =============================================================================
def test_symmetric_noise_flips_about_r_to_another_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 20000)
    noisy, flipped = noisy_labels(labels, num_classes=10, kind='symmetric', rate=0.3, seed=1)
    assert noisy.dtype == np.int32 and flipped.dtype == bool
    sigma = np.sqrt(0.3 * 0.7 / 20000)
    assert abs(flipped.mean() - 0.3) < 4 * sigma
    np.testing.assert_array_equal(noisy != labels, flipped)  # flipped => changed
    # Uniform over the 9 other classes.
    shift = (noisy[flipped] - labels[flipped]) % 10
    counts = np.bincount(shift, minlength=10)
    assert counts[0] == 0
    expected = flipped.sum() / 9
    assert np.all(np.abs(counts[1:] - expected) < 4 * np.sqrt(expected))
    all_flipped, mask = noisy_labels(labels, num_classes=10, kind='symmetric', rate=1.0, seed=0)
    assert mask.all() and (all_flipped != labels).all()


def test_asymmetric_noise_goes_to_the_next_class():
    labels = np.arange(5000) % 7
    noisy, flipped = noisy_labels(labels, num_classes=7, kind='asymmetric', rate=0.4, seed=3)
    assert abs(flipped.mean() - 0.4) < 4 * np.sqrt(0.4 * 0.6 / 5000)
    np.testing.assert_array_equal(noisy[flipped], (labels[flipped] + 1) % 7)
    np.testing.assert_array_equal(noisy[~flipped], labels[~flipped])
    assert set(noisy[flipped & (labels == 6)]) == {0}


def test_noise_is_deterministic_by_seed():
    labels = np.arange(1000) % 10
    a = noisy_labels(labels, num_classes=10, kind='symmetric', rate=0.2, seed=5)
    b = noisy_labels(labels, num_classes=10, kind='symmetric', rate=0.2, seed=5)
    c = noisy_labels(labels, num_classes=10, kind='symmetric', rate=0.2, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    none, mask = noisy_labels(labels, num_classes=10, kind='none', rate=0.5, seed=0)
    np.testing.assert_array_equal(none, labels)
    assert not mask.any()
    with pytest.raises(ValueError, match='kind='):
        noisy_labels(labels, num_classes=10, kind='pairflip', rate=0.2, seed=0)


def test_noise_config_errors():
    for overrides, message in (
            ({'dataset.label_noise': 'pairflip'}, "dataset.label_noise='pairflip' must be"),
            ({'dataset.label_noise': 'symmetric', 'dataset.label_noise_rate': 1.5},
             'dataset.label_noise_rate must be in'),
            ({'dataset.label_noise_rate': 0.2}, "dataset.label_noise_rate is set but"),
            ({'dataset.max_boxes': 0}, 'dataset.max_boxes must be >= 1')):
        with pytest.raises(ConfigError, match=message):
            validate(small_config(**overrides), num_devices=1)


def _noisy_config(**overrides):
    return small_config(**{'dataset.label_noise': 'symmetric', 'dataset.label_noise_rate': 0.4,
                           'dataset.label_noise_seed': 7, **overrides})


def test_tfds_noise_hits_train_only(synth):
    cfg, clean = synth
    config = _noisy_config()
    validate(config, num_devices=1)
    s = open_splits(config.dataset)
    noise = s.train_label_noise
    assert set(noise) == {'noisy', 'original', 'flipped'}
    assert noise['noisy'].shape == noise['flipped'].shape == (s.sizes['train'],) == (432,)
    np.testing.assert_array_equal(noise['original'], _labels_of(clean.train))
    np.testing.assert_array_equal(_labels_of(s.train), noise['noisy'])
    np.testing.assert_array_equal(noise['noisy'] != noise['original'], noise['flipped'])
    assert abs(noise['flipped'].mean() - 0.4) < 4 * np.sqrt(0.24 / 432)
    # The clean validation set and the test set keep their labels.
    np.testing.assert_array_equal(_labels_of(s.val), _labels_of(clean.val))
    np.testing.assert_array_equal(_labels_of(s.test), _labels_of(clean.test))
    # Training batches use the noisy labels.
    dcfg = _noisy_config(**{'dataset.crop_padding': 0, 'dataset.random_flip': False}).dataset
    batch = next(TrainBatches(s.train, cfg=dcfg, global_batch=32, seed=0, sharding=_sharding()))
    index = {s.train[i]['image'].tobytes(): i for i in range(len(s.train))}
    rows = [index[img.tobytes()] for img in np.asarray(batch['image'])]
    np.testing.assert_array_equal(np.asarray(batch['label']), noise['noisy'][rows])
    # Per-process shards: contiguous blocks of the same global noisy labels.
    shards = [open_splits(config.dataset, process_index=i, process_count=2) for i in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([_labels_of(p.train) for p in shards]), noise['noisy'])


def test_imagefolder_noise_and_multilabel_refusal(tmp_path):
    _write_folder(tmp_path, 'train', classes=('a', 'b', 'c', 'd'), per_class=10)
    _write_folder(tmp_path, 'test', classes=('a', 'b', 'c', 'd'), per_class=2)
    overrides = {'dataset.name': f'imagefolder:{tmp_path}', 'dataset.val_fraction': 0.25,
                 'dataset.label_noise': 'asymmetric', 'dataset.label_noise_rate': 0.5}
    s = open_splits(_noisy_config(**overrides).dataset)
    clean = open_splits(small_config(**{'dataset.name': f'imagefolder:{tmp_path}',
                                        'dataset.val_fraction': 0.25}).dataset)
    noise = s.train_label_noise
    np.testing.assert_array_equal(noise['original'], _labels_of(clean.train))
    np.testing.assert_array_equal(_labels_of(s.train), noise['noisy'])
    np.testing.assert_array_equal(noise['noisy'][noise['flipped']],
                                  (noise['original'][noise['flipped']] + 1) % 4)
    assert 0 < noise['flipped'].sum() < 30
    np.testing.assert_array_equal(_labels_of(s.val), _labels_of(clean.val))
    np.testing.assert_array_equal(_labels_of(s.test), _labels_of(clean.test))
    shards = [open_splits(_noisy_config(**overrides).dataset, process_index=i, process_count=2)
              for i in range(2)]
    np.testing.assert_array_equal(_labels_of(shards[0].train), noise['noisy'][0::2])
    np.testing.assert_array_equal(_labels_of(shards[1].train), noise['noisy'][1::2])
    # Multi-label data (synthetic's attribute view) refuses label noise.
    with pytest.raises(ConfigError, match="dataset.label_noise='symmetric' needs a single-label"):
        open_splits(_noisy_config(**{'dataset.label_key': 'attributes'}).dataset)
