"""Sources, splits and grain pipelines: determinism, resumable iterator state,
exact eval coverage, per-process sharding, a training stream independent of
the process count, imagefolder and generic TFDS."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import small_config
from PIL import Image

from camjax import parallel
from camjax.data import TrainBatches, eval_batches, open_splits
from camjax.data.pipeline import process_slice, train_dataset
from camjax.data.sources import ImageFolderSource
from camjax.errors import CamjaxError


@pytest.fixture(scope='module')
def splits():
    return open_splits(small_config().dataset)


def _train_batches(splits, seed=0, cfg=None):
    cfg = cfg or small_config().dataset
    return TrainBatches(splits.train, cfg=cfg, global_batch=32, seed=seed,
                        sharding=parallel.batch_sharded(parallel.make_mesh()))


def _labels_of(source):
    return np.array([int(source[i]['label']) for i in range(len(source))])


def test_validation_is_carved_from_train(splits):
    assert splits.sizes == {'train': 432, 'val': 48, 'test': 120}
    assert (len(splits.train), len(splits.val), len(splits.test)) == (432, 48, 120)
    train_images = {splits.train[i]['image'].tobytes() for i in range(len(splits.train))}
    assert not any(splits.val[i]['image'].tobytes() in train_images
                   for i in range(len(splits.val)))
    assert splits.num_classes == len(splits.class_names) >= 10


def test_train_batches_are_seeded_and_augmented(splits):
    a, b, c = _train_batches(splits, 0), _train_batches(splits, 0), _train_batches(splits, 1)
    batch_a, batch_b, batch_c = next(a), next(b), next(c)
    assert batch_a['image'].shape == (32, 32, 32, 3) and batch_a['image'].dtype == np.uint8
    assert batch_a['label'].dtype == np.int32
    np.testing.assert_array_equal(batch_a['image'], batch_b['image'])
    assert not np.array_equal(batch_a['image'], batch_c['image'])
    # Augmentation changes pixels: no training image equals its stored source image.
    stored = {splits.train[i]['image'].tobytes() for i in range(len(splits.train))}
    changed = sum(np.asarray(img).tobytes() not in stored for img in np.asarray(batch_a['image']))
    assert changed >= 24


def test_epochs_are_reshuffled_and_cover_the_split(splits):
    cfg = small_config().dataset
    cfg.crop_padding, cfg.random_flip = 0, False
    batches = _train_batches(splits, cfg=cfg)
    per_epoch = len(splits.train) // 32  # 13 full batches; batches run across epochs

    def images(n):
        return [img.tobytes() for _ in range(n) for img in np.asarray(next(batches)['image'])]

    stored = {splits.train[i]['image'].tobytes() for i in range(len(splits.train))}
    first = images(per_epoch)
    assert len(set(first)) == len(first) == per_epoch * 32  # no repeats within an epoch
    assert set(first) <= stored
    rest_of_epoch = stored - set(first)
    second = images(per_epoch)
    assert set(second[:len(rest_of_epoch)]) == rest_of_epoch  # epoch 1 finishes first
    assert second[len(rest_of_epoch):] != first[:len(second) - len(rest_of_epoch)]  # reshuffled


def test_without_reshuffling_every_epoch_repeats_the_first_order(splits):
    cfg = small_config().dataset
    cfg.crop_padding, cfg.random_flip, cfg.reshuffle_each_epoch = 0, False, False
    n = len(splits.train)  # 432 = 27 batches of 16: two epochs end on a batch boundary
    batches = TrainBatches(splits.train, cfg=cfg, global_batch=16, seed=0,
                           sharding=parallel.batch_sharded(parallel.make_mesh()))
    labels = np.concatenate([np.asarray(next(batches)['label']) for _ in range(2 * n // 16)])
    np.testing.assert_array_equal(labels[n:], labels[:n])
    assert not np.array_equal(labels[:n], np.sort(labels[:n]))  # still one seeded shuffle
    # The default draws a new order for the second epoch.
    cfg.reshuffle_each_epoch = True
    batches = TrainBatches(splits.train, cfg=cfg, global_batch=16, seed=0,
                           sharding=parallel.batch_sharded(parallel.make_mesh()))
    again = np.concatenate([np.asarray(next(batches)['label']) for _ in range(2 * n // 16)])
    np.testing.assert_array_equal(again[:n], labels[:n])
    assert not np.array_equal(again[n:], labels[:n])


def test_worker_processes_give_the_same_stream_and_state(splits):
    threads = _train_batches(splits)
    want = [np.asarray(next(threads)['image']) for _ in range(5)]
    cfg = small_config().dataset
    cfg.num_workers = 2
    workers = _train_batches(splits, cfg=cfg)
    try:
        got = [np.asarray(next(workers)['image']) for _ in range(3)]
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=False))
        assert workers.get_state() == {'next_index': 3}
        threads.set_state(workers.get_state())  # either way: the same position
        assert np.array_equal(np.asarray(next(threads)['image']), want[3])
        workers.set_state({'next_index': 1})
        assert np.array_equal(np.asarray(next(workers)['image']), want[1])
    finally:
        workers.close()


def test_iterator_state_restores_the_exact_stream(splits):
    batches = _train_batches(splits)
    for _ in range(3):
        next(batches)
    state = batches.get_state()
    expected = [np.asarray(next(batches)['image']) for _ in range(2)]
    resumed = _train_batches(splits)
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(np.asarray(next(resumed)['image']), want)


def test_eval_batches_cover_every_example_once(splits):
    cfg = small_config().dataset
    sharding = parallel.batch_sharded(parallel.make_mesh())
    batches = list(eval_batches(splits.test, cfg=cfg, global_batch=48,
                                global_size=splits.sizes['test'], sharding=sharding))
    assert len(batches) == 3  # 120 examples in batches of 48
    masks = np.concatenate([np.asarray(b['mask']) for b in batches])
    labels = np.concatenate([np.asarray(b['label']) for b in batches])
    assert masks.sum() == 120 and masks[:120].all() and not masks[120:].any()
    np.testing.assert_array_equal(labels[:120], _labels_of(splits.test))


def test_eval_batches_of_chosen_indices(splits):
    # The loss landscape reads a seeded sample of the split, not its first
    # examples (an image folder lists them class by class).
    from camjax.analysis.analyze import landscape_indices
    cfg = small_config().dataset
    class_sorted = np.sort(_labels_of(splits.test))
    chosen = landscape_indices(len(class_sorted), 30, seed=0)
    assert len(set(chosen)) == 30 and np.all(np.diff(chosen) > 0)
    assert len(np.unique(class_sorted[chosen])) > len(np.unique(class_sorted[:30]))
    assert len(landscape_indices(10, 30, seed=0)) == 10
    batches = list(eval_batches(splits.test, cfg=cfg, global_batch=16, global_size=30,
                                indices=chosen,
                                sharding=parallel.batch_sharded(parallel.make_mesh())))
    assert len(batches) == 2
    masks = np.concatenate([np.asarray(b['mask']) for b in batches])
    labels = np.concatenate([np.asarray(b['label']) for b in batches])
    assert masks.sum() == 30 and not masks[30:].any()
    np.testing.assert_array_equal(labels[:30], _labels_of(splits.test)[chosen])


def test_per_process_shards_are_disjoint_and_complete(splits):
    cfg = small_config().dataset
    shards = [open_splits(cfg, process_index=i, process_count=2) for i in range(2)]
    for split in ('train', 'val', 'test'):
        parts = [getattr(s, split) for s in shards]
        assert abs(len(parts[0]) - len(parts[1])) <= 1
        assert len(parts[0]) + len(parts[1]) == shards[0].sizes[split]
        seen = [{p[i]['image'].tobytes() for i in range(len(p))} for p in parts]
        assert not seen[0] & seen[1]
    # Training reads the whole training part on every process, in one global
    # order: the same as a single process's.
    whole = [splits.train.full[i]['image'].tobytes() for i in range(len(splits.train.full))]
    for s in shards:
        assert [s.train.full[i]['image'].tobytes() for i in range(len(s.train.full))] == whole


@pytest.mark.parametrize('count', [1, 2, 4])
def test_process_slices_concatenate_to_the_one_process_batch(splits, count):
    """The training stream is a function of (seed, step): for P processes the
    P slices of each global batch, concatenated, are exactly the batch that
    one process's TrainBatches yields -- images (augmented) and labels -- for
    steps on both sides of the first epoch boundary (432 examples: batch 13
    spans it). A step far into the stream is reached lazily, without reading
    what lies before it."""
    cfg = small_config().dataset
    batches = TrainBatches(splits.train, cfg=cfg, global_batch=32, seed=3,
                           sharding=parallel.batch_sharded(parallel.make_mesh()))
    want = [jax.device_get(next(batches)) for _ in range(16)]
    parts = [train_dataset(splits.train.full, cfg=cfg, global_batch=32, seed=3,
                           slice_index=i, slice_count=count) for i in range(count)]
    for step in range(16):
        for key in ('image', 'label'):
            np.testing.assert_array_equal(
                np.concatenate([part[step][key] for part in parts]), want[step][key])
    far = [part[10**9] for part in parts]
    assert sum(len(f['label']) for f in far) == 32
    # One process on the mesh holds every row: slice 0 of 1.
    assert process_slice(parallel.batch_sharded(parallel.make_mesh()), 32) == (0, 1)


def _write_folder(root, split, classes=('cat', 'dog', 'eel'), per_class=5, size=12):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / c / f'{i}.png')


def test_imagefolder_splits(tmp_path):
    _write_folder(tmp_path, 'train')
    _write_folder(tmp_path, 'test', per_class=2)
    cfg = small_config(**{'dataset.name': f'imagefolder:{tmp_path}',
                          'dataset.val_fraction': 0.2}).dataset
    s = open_splits(cfg)
    assert s.class_names == ('cat', 'dog', 'eel')
    assert s.sizes == {'train': 12, 'val': 3, 'test': 6}
    assert s.test[0]['image'].shape == (12, 12, 3)
    # The carve is a seeded permutation, not the last class's files.
    assert len(set(_labels_of(s.val))) > 1 or len(s.val) < 2
    batch = next(TrainBatches(s.train, cfg=cfg, global_batch=4, seed=0,
                              sharding=parallel.batch_sharded(parallel.make_mesh())))
    assert batch['image'].shape == (4, 32, 32, 3)  # resized to dataset.image_size


def test_imagefolder_corrupt_image_names_the_file(tmp_path):
    _write_folder(tmp_path, 'train', per_class=1)
    _write_folder(tmp_path, 'test', per_class=1)
    bad = tmp_path / 'train' / 'dog' / '0.png'
    bad.write_bytes(b'not a png at all')
    source = ImageFolderSource([str(bad)], [0])
    with pytest.raises(CamjaxError, match=f'corrupt image {bad}'):
        source[0]


class TinyDigits(tfds.core.GeneratorBasedBuilder):
    """A stand-in for any TFDS image+label dataset prepared as array_record."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(10, 10, 1), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=['zero', 'one'])}))

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(20), 'test': self._generate_examples(6)}

    def _generate_examples(self, n):
        import io
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((10, 10), 12 * i, np.uint8)).save(buf, format='PNG')
            yield i, {'image': buf.getvalue(), 'label': i % 2}


def test_generic_tfds_dataset(tmp_path):
    TinyDigits(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
    cfg = small_config(**{'dataset.name': 'tfds:tiny_digits', 'dataset.data_dir': str(tmp_path),
                          'dataset.val_fraction': 0.25}).dataset
    s = open_splits(cfg)
    assert s.sizes == {'train': 15, 'val': 5, 'test': 6}
    assert s.class_names == ('zero', 'one')
    batch = next(eval_batches(s.test, cfg=cfg, global_batch=8, global_size=6,
                              sharding=parallel.batch_sharded(parallel.make_mesh())))
    assert batch['image'].shape == (8, 32, 32, 3)  # grayscale 10x10 -> RGB 32x32
    missing = small_config(**{'dataset.name': 'tfds:never_prepared_ds',
                              'dataset.data_dir': str(tmp_path)}).dataset
    with pytest.raises(CamjaxError, match='not prepared'):
        open_splits(missing)


def test_start_up_summary_names_resize_and_channel_conversion(tmp_path):
    """An MNIST-like folder (28 px grayscale) trained at 64 px ran 6.6x slower
    and nothing said so; the summary line per split does."""
    from PIL import Image

    from camjax.data.summary import describe_splits
    for split in ('train', 'test'):
        for c in ('0', '1'):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(5):
                Image.new('L', (28, 28), 20 * i).save(tmp_path / split / c / f'{i}.png')
    cfg = small_config(**{'dataset.name': f'imagefolder:{tmp_path}', 'dataset.image_size': 64,
                          'dataset.val_fraction': 0.2}).dataset
    lines = describe_splits(open_splits(cfg), cfg)
    assert lines == [f'{split}: imagefolder:{tmp_path}, {n} images, 2 classes, stored e.g. '
                     f'28x28 grayscale, resized to 64x64, grayscale -> RGB'
                     for split, n in (('train', 8), ('val', 2), ('test', 10))]
    synthetic = small_config().dataset
    assert describe_splits(open_splits(synthetic), synthetic)[0] == (
        'train: synthetic, 432 images, 12 classes, stored e.g. 32x32 RGB, used at 32x32')
