"""LinRNM on CIFAR-10 (LinR paper, Eq. 10 and Table 7): no mixing partner --
f(a x) is pulled towards a f(x) -- for VGG-19-bn and DenseNet-121, T = 10
rounds of one epoch of classification then one of LinR.

  python -m camjax.main --config=configs/cifar10_linrnl.py:vgg19_bn,train   # baseline
  python -m camjax.main --config=configs/cifar10_linrnm.py:vgg19_bn

It refines the baseline that cifar10_linrnl.py trains (same data, same models).
"""

from camjax.config.presets import cifar10_folder, linr_refinement
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

OPTIONS = {'model': ('vgg19_bn', 'densenet121')}
SMOKE = ('smoke',)
MODELS = {'vgg19_bn': 'vgg19_bn', 'densenet121': 'densenet121_cifar'}


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    cifar10_folder(config.dataset)
    config.model = dict(name=MODELS[choice['model']])
    config.train.batch_size = 128
    linr_refinement(config, variant='linrnm', rounds=10,
                    init_from=f'runs/cifar10_linrnl_{choice["model"]}-train')
    return smoke(config) if is_smoke else config
