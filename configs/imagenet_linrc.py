"""LinRC refinement of an ImageNet ResNet-18 (LinR paper, Sec. 4.3 and Table 4):
N_cls = N_LinR = 500 steps per phase, T = 50 rounds, batch 32 per device (8
devices in the paper: 256), optimizer_cls SGD lr 3e-4 / wd 5e-4 and
optimizer_linr SGD lr 1e-3 (the paper's smaller LinR rate, for ImageNet).

  # 1. the converged baseline (or point train.init_from at any camjax run):
  python -m camjax.main --config=configs/imagenet_linrc.py:train
  # 2. refine it (restores runs/imagenet_linrc_train, model variables only):
  python -m camjax.main --config=configs/imagenet_linrc.py

The batch is set per device (train.per_device_batch_size): camjax makes it
global after jax.distributed starts, so the config never touches a device.
A resumed run must use the same number of devices (its config.json records
the global batch); the training learning rate is 0.1 per 256 images
(optimizer.reference_batch_size), so it follows the batch.
"""

from camjax.config.presets import imagenet2012, linr_refinement
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

OPTIONS = {'mode': ('refine', 'train')}
SMOKE = ('smoke', 'train,smoke')
PER_DEVICE_BATCH = 32


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    imagenet2012(config.dataset)
    config.model = dict(name='resnet18_imagenet', dtype='bfloat16')
    config.train.per_device_batch_size = PER_DEVICE_BATCH
    config.train.per_device_eval_batch_size = 2 * PER_DEVICE_BATCH
    config.train.log_every = 100
    if choice['mode'] == 'train':  # He et al. 2016: 90 epochs, lr 0.1 /10 every 30
        config.optimizer.learning_rate, config.optimizer.reference_batch_size = 0.1, 256
        config.optimizer.nesterov = False
        config.optimizer.weight_decay = 1e-4
        config.optimizer.schedule = 'step'
        config.optimizer.step_epochs = (30.0, 60.0)
        config.train.num_epochs = 90.0
    else:
        linr_refinement(config, variant='linrc', rounds=50, steps=500,
                        linr_learning_rate=1e-3, init_from='runs/imagenet_linrc_train')
    return smoke(config) if is_smoke else config
