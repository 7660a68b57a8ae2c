"""Softmax regression (the course-notes baseline) on the synthetic dataset,
with early stopping on validation accuracy and the best checkpoint kept."""

from camjax.config_schema import base_config


def get_config():
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
    return config
