"""Class dependence of regularization (seed "Effects of Regularization":
Balestriero et al., 2022, "The Effects of Regularization and Data Augmentation
are Class Dependent") on CIFAR-10 at a reduced, CPU-sized budget.

  --config=configs/class_dependence.py:wd_0,nocrop     # the unregularized baseline
  --config=configs/class_dependence.py:wd_5e-4,nocrop  # weight decay only
  --config=configs/class_dependence.py:wd_5e-3,nocrop
  --config=configs/class_dependence.py:wd_0,crop       # random crop only

Every run has the same seed, data order and budget: a CIFAR ResNet-20, EPOCHS
epochs on the 45,000 training images (5,000 held out), batch 128, SGD lr 0.1
Nesterov, cosine decay, random flip always. `crop` adds the random crop after
4 px zero padding. `analyze` with the baseline first gives each regularizer's
mean accuracy change against the number of classes significantly worse
(McNemar, Holm-corrected), the worst class and the per-class delta plot. The
data is CIFAR-10 as an image folder (see configs/cifar10_hnc.py).
"""

from camjax.config.presets import cifar10_folder
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

EPOCHS = 5.0
WEIGHT_DECAY = {'wd_0': 0.0, 'wd_5e-4': 5e-4, 'wd_5e-3': 5e-3}
OPTIONS = {'weight_decay': tuple(WEIGHT_DECAY), 'augmentation': ('nocrop', 'crop')}
SMOKE = ('wd_5e-3,crop,smoke',)


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    cifar10_folder(config.dataset)
    config.dataset.crop_padding = 4 if choice['augmentation'] == 'crop' else 0
    config.model = dict(name='resnet20', conv_impl='auto')
    config.optimizer.weight_decay = WEIGHT_DECAY[choice['weight_decay']]
    config.train.num_epochs = EPOCHS
    config.evaluation.landscape_batches = 0
    return smoke(config) if is_smoke else config
