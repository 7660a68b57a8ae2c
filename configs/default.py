"""The embedded offline default: a small CIFAR-style ResNet on the synthetic
localization dataset with cross-entropy. Needs no download; about 1.5 minutes
on 2 CPU cores (the dataset is generated once into ~/.cache/camjax/tfds)."""

from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

SMOKE = ('smoke',)


def get_config(arg=None):
    _, is_smoke = choose(arg, {})
    config = base_config()
    config.dataset.name = 'synthetic'
    config.dataset.image_size = 64
    config.model = dict(name='resnet8', width=16, stem_stride=2)
    config.optimizer.learning_rate = 0.1
    config.optimizer.warmup_epochs = 0.5
    config.train.batch_size = 128
    config.train.num_epochs = 12.0
    return smoke(config) if is_smoke else config
