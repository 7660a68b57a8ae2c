"""LinRNL on CIFAR-10 (LinR paper, Table 3): refinement without labels -- the
classification phase is dropped and no label is read -- of VGG-19-bn and
DenseNet-121, T = 10 rounds of one epoch of LinR (SGD lr 1e-2, no wd).

  python -m camjax.main --config=configs/cifar10_linrnl.py:vgg19_bn,train   # baseline
  python -m camjax.main --config=configs/cifar10_linrnl.py:vgg19_bn         # LinRNL
  python -m camjax.main --config=configs/cifar10_linrnl.py:vgg19_bn,sweep   # Sec. 4.8

`sweep` refines every checkpoint the baseline saved (one per epoch; it keeps
all 164) with LinRNL for T = 5 rounds, and writes the train/test table, the
figures (Figs. 4 and 5) and the sweet point. The data is CIFAR-10 as an image
folder (train/<class>/*.jpg, test/<class>/*.jpg), e.g. ../shared/data's archive
unpacked to data/cifar10.
"""

from camjax.config.presets import cifar10_folder, cifar_step_schedule, linr_refinement
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

OPTIONS = {'model': ('vgg19_bn', 'densenet121'), 'mode': ('refine', 'train', 'sweep')}
SMOKE = ('vgg19_bn,smoke', 'densenet121,sweep,smoke')
MODELS = {'vgg19_bn': 'vgg19_bn', 'densenet121': 'densenet121_cifar'}


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    cifar10_folder(config.dataset)
    config.model = dict(name=MODELS[choice['model']])
    base_run = f'runs/cifar10_linrnl_{choice["model"]}-train'
    if choice['mode'] == 'train':
        cifar_step_schedule(config, learning_rate=0.1)
        config.train.keep_checkpoints = 164  # one per epoch, for the sweep
    else:
        linr_refinement(config, variant='linrnl', rounds=10, init_from=base_run)
        if choice['mode'] == 'sweep':
            config.mode, config.refine.rounds = 'sweep', 5
    return smoke(config) if is_smoke else config
