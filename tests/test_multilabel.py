"""Multi-label data end to end: a COCO-style TFDS dataset (objects/label, a
sequence of ClassLabel) becomes multi-hot labels; the training split's
positive rates are computed once and stored with the run; weighted sigmoid CE
(HNC paper, Eq. 8) plus HNC trains; mismatched terms are config errors."""

import io
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import small_config
from PIL import Image

from camjax import objectives
from camjax.data import open_splits
from camjax.errors import ConfigError
from camjax.rundir import read_records
from camjax.training.train import train_and_evaluate

NAMES = ('person', 'dog', 'car', 'boat')


def _objects(i):
    """Example i holds the classes of the set bits of i % 16 (0 = none, 15 = all)."""
    return [c for c in range(4) if (i % 16) >> c & 1]


class TinyCoco(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(16, 16, 3), encoding_format='png'),
            'objects': tfds.features.Sequence({'label': tfds.features.ClassLabel(names=NAMES)})}))

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(0, 80), 'test': self._generate_examples(80, 32)}

    def _generate_examples(self, start, n):
        for i in range(start, start + n):
            image = np.zeros((16, 16, 3), np.uint8)
            for c in _objects(i):  # each class paints its own quadrant
                image[8 * (c // 2):8 * (c // 2) + 8, 8 * (c % 2):8 * (c % 2) + 8] = 200
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format='PNG')
            yield i, {'image': buf.getvalue(), 'objects': {'label': _objects(i)}}


@pytest.fixture(scope='module')
def coco_config(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp('tinycoco'))
    TinyCoco(data_dir=data_dir, file_format='array_record').download_and_prepare()
    return small_config(**{
        'dataset.name': 'tfds:tiny_coco', 'dataset.data_dir': data_dir,
        'dataset.label_key': 'objects/label', 'dataset.image_size': 16,
        'dataset.val_fraction': 0.2, 'dataset.random_flip': False,
        'loss': (dict(name='weighted_sigmoid_ce'), dict(name='hnc_kd', weight=0.1, k=2)),
        'train.batch_size': 16, 'train.num_steps': 6, 'train.eval_every': 3,
        'train.eval_negative_cam_k': 2})


def test_multi_hot_labels_and_positive_rate(coco_config):
    splits = open_splits(coco_config.dataset)
    assert splits.multilabel and splits.num_classes == 4 and splits.class_names == NAMES
    labels = np.stack([splits.train[i]['label'] for i in range(len(splits.train))])
    assert labels.shape == (64, 4) and set(np.unique(labels)) <= {0.0, 1.0}
    np.testing.assert_allclose(splits.positive_rate, labels.mean(axis=0))
    assert labels.sum(axis=1).max() == 4  # some images have no negative class at all


def test_weighted_sce_with_hnc_trains_and_stores_positive_rate(coco_config, tmp_path):
    splits = open_splits(coco_config.dataset)
    objectives.validate_terms(coco_config.loss, num_classes=4, multilabel=True)
    state, _ = train_and_evaluate(coco_config, str(tmp_path), splits)
    assert int(state.step) == 6
    stored = json.loads((tmp_path / 'label_stats.json').read_text())
    np.testing.assert_allclose(stored['positive_rate'], splits.positive_rate, rtol=1e-6)
    final = [r for r in read_records(str(tmp_path)) if r['kind'] == 'eval'][-1]['test']
    assert final['count'] == 32 and 0.0 <= final['accuracy'] <= 1.0
    assert 'top5_accuracy' not in final and len(final['per_class_accuracy']) == 4
    assert np.isfinite(final['loss/hnc_kd']) and final['loss/weighted_sigmoid_ce'] > 0
    # Evaluating a run (analyze does so for every compared run) writes only
    # under its eval/: a run without label_stats.json is not given one.
    from camjax.evaluation.evaluate import evaluate_run
    (tmp_path / 'label_stats.json').unlink()
    evaluation = coco_config.evaluation.copy_and_resolve_references()
    evaluation.fgsm_eps = ()
    results = evaluate_run(str(tmp_path), evaluation, splits=splits, write=False)
    assert np.isfinite(results['multilabel']['loss'])
    assert not (tmp_path / 'label_stats.json').exists()


def test_classification_term_must_match_the_labels():
    with pytest.raises(ConfigError, match="must be 'weighted_sigmoid_ce' for multi-label"):
        objectives.validate_terms((dict(name='cross_entropy'),), num_classes=4, multilabel=True)
    with pytest.raises(ConfigError, match="must be 'cross_entropy' for single-label"):
        objectives.validate_terms((dict(name='weighted_sigmoid_ce'),), num_classes=4,
                                  multilabel=False)


def test_synthetic_attributes_are_a_multilabel_view():
    from camjax.data.synthetic import ATTRIBUTE_NAMES, CLASSES
    cfg = small_config(**{'dataset.label_key': 'attributes'}).dataset
    splits = open_splits(cfg)
    assert splits.multilabel and splits.class_names == ATTRIBUTE_NAMES
    single = open_splits(small_config().dataset)
    for i in range(24):
        name, shape, colour, texture = CLASSES[int(single.train[i]['label'])]
        expected = {colour, shape} | ({'striped'} if texture == 'striped' else set())
        got = {ATTRIBUTE_NAMES[j] for j in np.flatnonzero(splits.train[i]['label'])}
        assert got == expected
