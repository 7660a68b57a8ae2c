"""Attribute-folder datasets (PETA / PA-100k style multi-label attributes):
<dir>/images/... plus one <split>.csv per split. Multi-hot labels, the
training part's positive rates, the seeded validation carve, per-process
shards, and one-line errors for every malformed input."""

import numpy as np
import pytest
from conftest import small_config
from PIL import Image

from camjax import parallel
from camjax.config.schema import validate
from camjax.data import TrainBatches, eval_batches, open_splits
from camjax.errors import CamjaxError, ConfigError

ATTRS = ('female', 'hat', 'backpack')


def _row_labels(i):
    """Row i's attributes: the bits of i % 8 (so every combination appears)."""
    return [(i % 8) >> a & 1 for a in range(3)]


def _write(root, split, rows, size=10):
    """Images whose pixels all equal 10 * row id (identifies the row on read)."""
    lines = ['image,' + ','.join(ATTRS)]
    for i in rows:
        rel = f'{split}/p{i // 5}/{i}.png'
        (root / 'images' / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size, 3), 10 * i, np.uint8)).save(root / 'images' / rel)
        lines.append(rel + ',' + ','.join(map(str, _row_labels(i))))
    (root / f'{split}.csv').write_text('\n'.join(lines) + '\n')


@pytest.fixture
def attr_dir(tmp_path):
    _write(tmp_path, 'train', range(20))
    _write(tmp_path, 'test', range(20, 26))
    return tmp_path


def _config(root, **overrides):
    return small_config(**{'dataset.name': f'attrfolder:{root}', 'dataset.val_fraction': 0.25,
                           'loss': (dict(name='weighted_sigmoid_ce'),), **overrides})


def _rows_of(source):
    """(row ids, labels) of every example, the row id read back from the pixels."""
    examples = [source[i] for i in range(len(source))]
    return ([int(e['image'][0, 0, 0]) // 10 for e in examples],
            np.stack([e['label'] for e in examples]))


def test_round_trip_labels_sizes_and_positive_rate(attr_dir):
    cfg = _config(attr_dir)
    validate(cfg, num_devices=1)
    s = open_splits(cfg.dataset)
    assert s.multilabel and s.class_names == ATTRS and s.num_classes == 3
    assert s.sizes == {'train': 15, 'val': 5, 'test': 6}
    assert s.train_label_noise is None
    train_rows, train_labels = _rows_of(s.train)
    val_rows, _ = _rows_of(s.val)
    test_rows, test_labels = _rows_of(s.test)
    assert train_labels.dtype == np.float32 and train_labels.shape == (15, 3)
    for rows, labels in ((train_rows, train_labels), (test_rows, test_labels)):
        np.testing.assert_array_equal(labels, [_row_labels(i) for i in rows])
    # The carve is a seeded permutation of train, disjoint from the rest.
    assert sorted(train_rows + val_rows) == list(range(20))
    assert val_rows != list(range(15, 20))
    assert test_rows == list(range(20, 26))
    # Positive rate: the exact per-attribute mean over the training part only.
    expected = np.mean([_row_labels(i) for i in train_rows], axis=0)
    np.testing.assert_array_equal(s.positive_rate, expected)
    assert not np.allclose(expected, np.mean([_row_labels(i) for i in range(20)], axis=0))
    # Same carve on every open (split_seed), another one with another seed.
    assert _rows_of(open_splits(cfg.dataset).val)[0] == val_rows
    cfg.dataset.split_seed = 1
    assert _rows_of(open_splits(cfg.dataset).val)[0] != val_rows


def test_batches_carry_multi_hot_labels(attr_dir):
    cfg = _config(attr_dir).dataset
    s = open_splits(cfg)
    sharding = parallel.batch_sharded(parallel.make_mesh())
    batch = next(TrainBatches(s.train, cfg=cfg, global_batch=4, seed=0, sharding=sharding))
    assert batch['image'].shape == (4, 32, 32, 3)  # 10px images resized to image_size
    assert batch['label'].shape == (4, 3) and batch['label'].dtype == np.float32
    batches = list(eval_batches(s.test, cfg=cfg, global_batch=4, global_size=6,
                                sharding=sharding))
    labels = np.concatenate([np.asarray(b['label']) for b in batches])
    np.testing.assert_array_equal(labels[:6], [_row_labels(i) for i in range(20, 26)])
    assert 'bbox' not in batches[0]  # attribute CSVs carry no boxes


def test_process_shards_are_disjoint_and_complete(attr_dir):
    cfg = _config(attr_dir).dataset
    shards = [open_splits(cfg, process_index=i, process_count=2) for i in range(2)]
    for split in ('train', 'val', 'test'):
        rows = [_rows_of(getattr(s, split))[0] for s in shards]
        assert not set(rows[0]) & set(rows[1])
        assert len(rows[0]) + len(rows[1]) == shards[0].sizes[split]
    np.testing.assert_array_equal(shards[0].positive_rate, shards[1].positive_rate)


def _open_error(root, **overrides):
    with pytest.raises(CamjaxError) as info:
        open_splits(_config(root, **overrides).dataset)
    return str(info.value)


def test_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match='attrfolder directory .* does not exist'):
        validate(_config(tmp_path / 'nope'), num_devices=1)


def test_missing_csv(attr_dir):
    msg = _open_error(attr_dir, **{'dataset.test_split': 'val'})
    assert 'has no val.csv' in msg


def test_header_without_image_column(attr_dir):
    text = (attr_dir / 'test.csv').read_text().replace('image,', 'file,', 1)
    (attr_dir / 'test.csv').write_text(text)
    msg = _open_error(attr_dir)
    assert 'test.csv' in msg and 'no "image" column' in msg


def test_non_binary_value_names_file_and_line(attr_dir):
    lines = (attr_dir / 'train.csv').read_text().splitlines()
    lines[3] = lines[3].rsplit(',', 1)[0] + ',2'  # row 3 of the file: its backpack value
    (attr_dir / 'train.csv').write_text('\n'.join(lines) + '\n')
    msg = _open_error(attr_dir)
    assert f"{attr_dir / 'train.csv'}:4: attribute 'backpack' is '2'" in msg


def test_wrong_field_count_names_file_and_line(attr_dir):
    with open(attr_dir / 'test.csv', 'a') as f:
        f.write('test/p4/20.png,1,0\n')
    assert f"{attr_dir / 'test.csv'}:8: 3 fields, the header has 4" in _open_error(attr_dir)


def test_attribute_columns_must_match(attr_dir):
    text = (attr_dir / 'test.csv').read_text().replace('hat,backpack', 'backpack,hat', 1)
    (attr_dir / 'test.csv').write_text(text)
    msg = _open_error(attr_dir)
    assert "test.csv has attribute columns ['female', 'backpack', 'hat']" in msg


def test_missing_image_is_named_at_open(attr_dir):
    (attr_dir / 'images' / 'train' / 'p1' / '7.png').unlink()
    msg = _open_error(attr_dir)
    assert msg.startswith(f"{attr_dir / 'train.csv'}:9: the listed image does not exist: ")
    assert msg.endswith('train/p1/7.png')


def test_corrupt_image_names_the_file(attr_dir):
    bad = attr_dir / 'images' / 'test' / 'p4' / '21.png'
    bad.write_bytes(b'not a png')
    s = open_splits(_config(attr_dir).dataset)
    with pytest.raises(CamjaxError, match=f'corrupt image {bad}'):
        s.test[1]


def test_label_noise_is_refused_for_multi_label(attr_dir):
    cfg = _config(attr_dir, **{'dataset.label_noise': 'symmetric',
                               'dataset.label_noise_rate': 0.2})
    with pytest.raises(ConfigError, match='dataset.label_noise needs single-label'):
        validate(cfg, num_devices=1)
    with pytest.raises(ConfigError, match='dataset.label_noise'):
        open_splits(cfg.dataset)
