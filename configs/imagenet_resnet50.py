"""ImageNet ResNet-50 (He et al. 2016) from TFDS imagenet2012 prepared as
array_record, for a multi-GPU box or a TPU pod: batch 256 (global), lr 0.1 /10
every 30 epochs, 90 epochs, weight decay 1e-4, bf16 compute."""

from camjax.config.presets import imagenet2012
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

SMOKE = ('smoke',)


def get_config(arg=None):
    _, is_smoke = choose(arg, {})
    config = base_config()
    imagenet2012(config.dataset)
    config.dataset.prefetch = 8
    config.model = dict(name='resnet50_imagenet', dtype='bfloat16')
    config.optimizer.learning_rate = 0.1
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = 'step'
    config.optimizer.step_epochs = (30.0, 60.0)
    config.train.batch_size = 256
    config.train.eval_batch_size = 512
    config.train.num_epochs = 90.0
    config.train.log_every = 100
    return smoke(config) if is_smoke else config
