"""Softmax regression (the course-notes baseline) on the synthetic dataset,
with early stopping on validation accuracy and the best checkpoint kept."""

from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

SMOKE = ('smoke',)


def get_config(arg=None):
    _, is_smoke = choose(arg, {})
    config = base_config()
    config.dataset.image_size = 32
    config.dataset.crop_padding = 0
    config.dataset.random_flip = False
    config.model = dict(name='linear')
    config.optimizer.learning_rate = 0.02
    config.optimizer.schedule = 'constant'
    config.optimizer.weight_decay = 1e-4
    config.train.batch_size = 128
    config.train.num_epochs = 60.0
    config.train.early_stopping_patience = 3
    return smoke(config) if is_smoke else config
