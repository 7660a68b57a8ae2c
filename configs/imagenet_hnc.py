"""HNC on ImageNet (HNC paper, Sec. 4.2, Table 2): ResNet-101/152, k = 100
negatives, lambda 0.07 for HNC_mse and 0.0065 (ResNet-101) / 0.0048
(ResNet-152) for HNC_kd; 120 epochs, lr 0.1 divided by 10 every 30 epochs,
batch 256, weight decay 1e-4.

  --config=configs/imagenet_hnc.py:resnet152,hnc_kd
"""

from camjax.config.presets import imagenet2012
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

OPTIONS = {'model': ('resnet101', 'resnet152'), 'loss': ('ce', 'hnc_mse', 'hnc_kd')}
# Smoke runs shrink depth, so ResNet-101 and -152 smoke runs would be identical.
SMOKE = ('resnet152,hnc_kd,smoke',)
KD_WEIGHT = {'resnet101': 0.0065, 'resnet152': 0.0048}


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    imagenet2012(config.dataset)
    config.model = dict(name=f'{choice["model"]}_imagenet', dtype='bfloat16')
    hnc = {'ce': (), 'hnc_mse': (dict(name='hnc_mse', weight=0.07, k=100),),
           'hnc_kd': (dict(name='hnc_kd', weight=KD_WEIGHT[choice['model']], k=100),)}
    config.loss = (dict(name='cross_entropy'),) + hnc[choice['loss']]
    config.optimizer.learning_rate = 0.1
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = 'step'
    config.optimizer.step_epochs = (30.0, 60.0, 90.0)
    config.train.batch_size = 256
    config.train.eval_batch_size = 512
    config.train.num_epochs = 120.0
    config.train.log_every = 100
    return smoke(config) if is_smoke else config
