"""LinR refinement on CIFAR-100 (LinR paper, Table 2): VGG-19 and AlexNet.
Each round: one epoch of classification (SGD lr 3e-4, wd 5e-4), then one epoch
of LinR (SGD lr 1e-2, no wd); T = 10 rounds. The paper's table lists the
gains, not T, so T = 10 is this project's starting value.

  python -m camjax.main --config=configs/cifar100_linr.py:vgg19,train   # baseline
  python -m camjax.main --config=configs/cifar100_linr.py:vgg19         # LinR
  python -m camjax.main --config=configs/cifar100_linr.py:alexnet,linrc

Needs CIFAR-100 prepared as array_record (`tfds build cifar100
--file_format=array_record`). The baseline trains 164 epochs, lr 0.05 (0.01
for AlexNet) /10 at epochs 81 and 122, wd 5e-4 (bearpaw/pytorch-classification).
"""

from camjax.config.presets import cifar_step_schedule, linr_refinement
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

OPTIONS = {'model': ('vgg19', 'alexnet'), 'variant': ('linr', 'linrc'),
           'mode': ('refine', 'train')}
SMOKE = ('vgg19,smoke', 'alexnet,linrc,smoke')
MODELS = {'vgg19': 'vgg19', 'alexnet': 'alexnet_cifar'}
BASE_LR = {'vgg19': 0.05, 'alexnet': 0.01}


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    config.dataset.name = 'tfds:cifar100'
    config.dataset.image_size = 32
    config.dataset.mean = (0.5071, 0.4865, 0.4409)
    config.dataset.std = (0.2673, 0.2564, 0.2762)
    config.model = dict(name=MODELS[choice['model']])
    config.train.batch_size = 128
    if choice['mode'] == 'train':
        cifar_step_schedule(config, learning_rate=BASE_LR[choice['model']])
    else:
        linr_refinement(config, variant=choice['variant'], rounds=10,
                        init_from=f'runs/cifar100_linr_{choice["model"]}-train')
    return smoke(config) if is_smoke else config
