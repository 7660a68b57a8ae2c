"""CIFAR ResNet-20 (He et al. 2016, Sec. 4.2) on CIFAR-10 as an image folder.

Point dataset.name at a folder with train/<class>/*.jpg and test/<class>/*.jpg,
e.g. the archive in ../shared/data unpacked somewhere outside the repo:
  python -m camjax.main --config=configs/cifar10_resnet20.py \
      --config.dataset.name=imagefolder:/path/to/cifar10
Schedule as in the paper: batch 128, lr 0.1, /10 at 32k and 48k iterations
(~82 and ~123 epochs of 45k images), 164 epochs, weight decay 1e-4, momentum 0.9.
"""

from camjax.config.presets import cifar10_folder
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

SMOKE = ('smoke',)


def get_config(arg=None):
    _, is_smoke = choose(arg, {})
    config = base_config()
    cifar10_folder(config.dataset)
    config.model = dict(name='resnet20')
    config.optimizer.learning_rate = 0.1
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = 'step'
    config.optimizer.step_epochs = (82.0, 123.0)
    config.train.batch_size = 128
    config.train.num_epochs = 164.0
    return smoke(config) if is_smoke else config
