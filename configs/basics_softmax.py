"""The basics' lambda study (seed "TDT4265 Assignment 1") on CIFAR-10 pixels:
softmax regression z = x W + b on the 3,072 normalized pixels, SGD, an L2
penalty of strength lambda, and early stopping on the validation loss (the
best checkpoint is kept).

  --config=configs/basics_softmax.py:l2_0            # no penalty
  --config=configs/basics_softmax.py:l2_1e-2         # lambda = 1e-2
  --config=configs/basics_softmax.py:l2_0,fixed      # without shuffling

lambda is optimizer.weight_decay: SGD adds lambda * w to the gradient before
the momentum update, the gradient of the penalty (lambda / 2) ||w||^2 (the
course notes write lambda ||w||^2, i.e. their lambda is half of ours); the
bias is penalized too. `fixed` trains every epoch in the first epoch's seeded
order instead of reshuffling (dataset.reshuffle_each_epoch). As in the
assignment: plain SGD (no momentum) at lr 1e-2, batch 128, no augmentation;
up to EPOCHS epochs, evaluated twice an epoch, stopping after PATIENCE
evaluations without a lower validation loss.
The data is CIFAR-10 as an image folder (see configs/cifar10_hnc.py).
"""

from camjax.config.presets import cifar10_folder
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

LAMBDAS = {'l2_0': 0.0, 'l2_1e-3': 1e-3, 'l2_1e-2': 1e-2, 'l2_1e-1': 1e-1, 'l2_1': 1.0}
OPTIONS = {'l2': tuple(LAMBDAS), 'order': ('reshuffle', 'fixed')}
SMOKE = ('l2_1e-2,fixed,smoke',)
EPOCHS, PATIENCE = 20.0, 6
STEPS_PER_EPOCH = 45_000 // 128


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    cifar10_folder(config.dataset)
    config.dataset.crop_padding, config.dataset.random_flip = 0, False
    config.dataset.reshuffle_each_epoch = choice['order'] == 'reshuffle'
    config.model = dict(name='linear')
    o = config.optimizer
    o.learning_rate, o.schedule, o.weight_decay = 1e-2, 'constant', LAMBDAS[choice['l2']]
    o.momentum, o.nesterov = 0.0, False
    t = config.train
    t.num_epochs, t.batch_size = EPOCHS, 128
    t.eval_every = t.checkpoint_every = STEPS_PER_EPOCH // 2
    t.early_stopping_patience, t.selection_metric = PATIENCE, 'loss'
    t.eval_negative_cam_k = 0  # a linear model's "CAM" is one pixel
    config.evaluation.fgsm_eps = ()
    config.evaluation.landscape_batches = 0
    config.evaluation.cam_grid_images = 0
    return smoke(config) if is_smoke else config
