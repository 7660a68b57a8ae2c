"""The LinR study of docs/results.md (issue 22): does LinR refine a converged
CIFAR-10 ResNet-20, and against which controls?

The baseline is a CIFAR ResNet-20 on the LinR paper's CIFAR step schedule
(bearpaw/pytorch-classification: SGD lr 0.1, momentum 0.9, weight decay 5e-4,
lr /10 at 49.4% and 74.4% of the epochs, as 81 and 122 of 164) cut to EPOCHS
epochs to fit a 2-core CPU, keeping one checkpoint per epoch so the
sweet-point study (Sec. 4.8) can refine earlier ones.

  --config=configs/cifar10_linr_study.py:baseline   # the converged run
  --config=configs/cifar10_linr_study.py:linrnl     # LinRNL of it (also linr, linrc, linrnm)
  --config=configs/cifar10_linr_study.py:finetune   # the control: labels, Sec. 4.5's SGD

A refinement restores runs/cifar10_linr-baseline (train.init_from) and runs
ROUNDS rounds of STEPS steps per phase (Algorithm 1). `finetune` trains the
same restored model with labels for as many steps as a LinRNL refinement
takes, at the paper's fine-tuning settings (Sec. 4.5: SGD lr 1e-3, momentum
0.9, weight decay 5e-4). The data is CIFAR-10 as an image folder, e.g.
../shared/data's archive unpacked to data/cifar10 (or set dataset.name).
"""

from camjax.config.presets import cifar10_folder, cifar_step_schedule, linr_refinement
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

EPOCHS = 40.0
BASELINE = 'runs/cifar10_linr-baseline'
ROUNDS, STEPS = 1, 500  # per refinement phase: the study's fixed budget
OPTIONS = {'stage': ('baseline', 'linrnl', 'linr', 'linrc', 'linrnm', 'finetune')}
SMOKE = ('baseline,smoke', 'linrc,smoke', 'finetune,smoke')


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    stage = choice['stage']
    config = base_config()
    cifar10_folder(config.dataset)
    config.model = dict(name='resnet20', conv_impl='auto')
    cifar_step_schedule(config, learning_rate=0.1)
    config.train.num_epochs = EPOCHS
    config.optimizer.step_epochs = (EPOCHS * 81 / 164, EPOCHS * 122 / 164)
    config.train.keep_checkpoints = int(EPOCHS)  # one per epoch, for the sweet point
    if stage == 'finetune':
        config.train.init_from = BASELINE
        o = config.optimizer
        o.learning_rate, o.schedule, o.weight_decay = 1e-3, 'constant', 5e-4
        config.train.num_steps = ROUNDS * STEPS
        config.train.eval_every = config.train.checkpoint_every = STEPS
        config.train.keep_checkpoints = 3
    elif stage != 'baseline':
        linr_refinement(config, variant=stage, rounds=ROUNDS, steps=STEPS, init_from=BASELINE)
    return smoke(config) if is_smoke else config
