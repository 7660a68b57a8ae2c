"""The CIFAR-10 studies of docs/results.md at a reduced, CPU-sized budget:
HNC (HNC paper, Sec. 4.1) and LinR refinement of the converged baseline (LinR
paper, Sec. 4.4, Table 3), and mixup then LinR (LinR paper, Sec. 4.7, Table 7).

A CIFAR ResNet-20 trained from scratch on the 45,000 training images left after
the 5,000 validation images are held out (dataset.val_fraction = 0.1), for
EPOCHS epochs: batch 128, SGD lr 0.1 with Nesterov momentum 0.9, weight decay
5e-4, cosine decay to 0, random crop (pad 4) and flip.

  --config=configs/cifar10_hnc.py:ce          # baseline
  --config=configs/cifar10_hnc.py:hnc_kd      # CE + 0.0065 HNC_kd, k = 5
  --config=configs/cifar10_hnc.py:hnc_mse     # CE + 0.07 HNC_mse, k = 5
  --config=configs/cifar10_hnc.py:ce,linrnl   # LinRNL refinement of the baseline
  --config=configs/cifar10_hnc.py:mixup       # CE with mixup, alpha = 1 (Zhang et al.)
  --config=configs/cifar10_hnc.py:mixup,linrnl  # LinRNL refinement of the mixup run

A refinement (linrnl, linr, linrc) restores the matching trained run
(train.init_from: runs/cifar10_hnc-ce or runs/cifar10_hnc-mixup unless set)
and runs ROUNDS[variant] rounds of one epoch per phase (Algorithm 1): LinR SGD
lr 1e-2 without weight decay, and for linr / linrc a classification phase
with SGD lr 3e-4. The HNC paper's CIFAR weights are those of
configs/cifar100_hnc.py (its ImageNet values); k = 5 of CIFAR-10's 9
negative classes. FGSM (HNC paper, Sec. 4.4) at eps 1-8 / 255: the default
eps of 0.05-0.3 leave nothing standing at 32 px. The data is CIFAR-10 as an
image folder, e.g. ../shared/data's archive unpacked to data/cifar10 (or set
dataset.name).
"""

from camjax.config.presets import cifar10_folder, linr_refinement
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

EPOCHS = 15.0
ROUNDS = {'linrnl': 5, 'linr': 3, 'linrc': 3}
OPTIONS = {'recipe': ('ce', 'hnc_kd', 'hnc_mse', 'mixup'),
           'stage': ('train', 'linrnl', 'linr', 'linrc')}
SMOKE = ('hnc_mse,smoke', 'mixup,smoke', 'ce,linrnl,smoke')
FGSM_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)  # CIFAR-sized steps on [0, 1] pixels
MIXUP_ALPHA = 1.0  # Zhang et al.'s CIFAR-10 value
HNC_TERMS = {'ce': (), 'mixup': (), 'hnc_mse': (dict(name='hnc_mse', weight=0.07, k=5),),
             'hnc_kd': (dict(name='hnc_kd', weight=0.0065, k=5),)}


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    cifar10_folder(config.dataset)
    config.model = dict(name='resnet20', conv_impl='auto')
    config.loss = (dict(name='cross_entropy'),) + HNC_TERMS[choice['recipe']]
    config.train.num_epochs = EPOCHS
    config.evaluation.fgsm_eps = FGSM_EPS
    stage = choice['stage']
    if stage == 'train' and choice['recipe'] == 'mixup':
        config.train.mixup_alpha = MIXUP_ALPHA
    if stage != 'train':
        linr_refinement(config, variant=stage, rounds=ROUNDS[stage],
                        init_from=f'runs/cifar10_hnc-{choice["recipe"]}')
    return smoke(config) if is_smoke else config
