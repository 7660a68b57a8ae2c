"""Real photographs: CIFAR-10 (JPEG image folder) from ../shared/data through
the imagefolder source, the grain pipeline and a short training run. Skipped
with a reason where ../shared/data is absent (a user's fresh checkout)."""

import os
import subprocess

import numpy as np
import pytest
from conftest import ROOT, small_config

from camjax import parallel
from camjax.data import TrainBatches, open_splits
from camjax.rundir import read_records
from camjax.training.train import train_and_evaluate

ARCHIVE = os.path.join(ROOT, '..', 'shared', 'data', 'cifar10-jpeg.tar.gz')
CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
           'truck')

pytestmark = pytest.mark.skipif(not os.path.exists(ARCHIVE),
                                reason='../shared/data/cifar10-jpeg.tar.gz is not present')


@pytest.fixture(scope='module')
def cifar_subset(tmp_path_factory):
    """100 train and 30 test images per class, unpacked outside the repo."""
    root = tmp_path_factory.mktemp('cifar10')
    subprocess.run(['tar', '-xzf', ARCHIVE, '-C', str(root), '--wildcards',
                    'train/*/00[0-9]?.jpg', 'test/*/00[0-2]?.jpg'], check=True)
    return root


def test_cifar10_imagefolder_is_read_as_real_images(cifar_subset):
    cfg = small_config(**{'dataset.name': f'imagefolder:{cifar_subset}'}).dataset
    splits = open_splits(cfg)
    assert splits.class_names == CLASSES
    assert splits.sizes == {'train': 900, 'val': 100, 'test': 300}
    batch = next(TrainBatches(splits.train, cfg=cfg, global_batch=64, seed=0,
                              sharding=parallel.batch_sharded(parallel.make_mesh())))
    images = np.asarray(batch['image'], np.float32)
    assert images.shape == (64, 32, 32, 3)
    # Photographs, not noise or blanks: mid-range mean, real contrast, and
    # strong neighbouring-pixel correlation.
    assert 60 < images.mean() < 190 and images.std() > 30
    a, b = images[:, :, :-1].ravel(), images[:, :, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.8


def test_short_training_on_cifar10_beats_chance(cifar_subset, tmp_path):
    config = small_config(**{
        'dataset.name': f'imagefolder:{cifar_subset}',
        'dataset.mean': (0.4914, 0.4822, 0.4465), 'dataset.std': (0.2470, 0.2435, 0.2616),
        'model': {'name': 'resnet8', 'width': 16}, 'train.batch_size': 50,
        'train.num_steps': 0, 'train.num_epochs': 6.0, 'train.eval_every': 0,
        'train.checkpoint_every': 0, 'train.log_every': 0,
        'optimizer.learning_rate': 0.05})
    _, best = train_and_evaluate(config, str(tmp_path), open_splits(config.dataset))
    evals = [r for r in read_records(str(tmp_path)) if r['kind'] == 'eval']
    assert len(evals) == 6
    assert best['test']['accuracy'] > 0.2  # chance is 0.1 on 10 balanced classes
