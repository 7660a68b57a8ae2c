"""HNC on CUB-200-2011 (HNC paper, Sec. 4.3): ResNet-50 fine-tuned from
ImageNet weights, lr 0.001 divided by 10 after 50 epochs, batch 16.

  --config=configs/cub_hnc.py:hnc_kd --config.train.init_from=runs/imagenet_resnet50

train.init_from must name a camjax ImageNet ResNet-50 run (no weights are
downloaded at run time); its classifier is re-initialized for 200 classes.
CUB is TFDS caltech_birds2011 prepared as array_record (its builder needs the
'prepare' extra). The total epoch count and the CUB lambdas are not restated
in our issue: 100 epochs and the ImageNet ResNet-101 lambdas are the start.
"""

from camjax.config.presets import imagenet_input
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

OPTIONS = {'loss': ('ce', 'hnc_mse', 'hnc_kd')}
SMOKE = ('hnc_mse,smoke',)


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    config.dataset.name = 'tfds:caltech_birds2011'
    imagenet_input(config.dataset)
    config.model = dict(name='resnet50_imagenet')
    hnc = {'ce': (), 'hnc_mse': (dict(name='hnc_mse', weight=0.07, k=100),),
           'hnc_kd': (dict(name='hnc_kd', weight=0.0065, k=100),)}
    config.loss = (dict(name='cross_entropy'),) + hnc[choice['loss']]
    config.optimizer.learning_rate = 0.001
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = 'step'
    config.optimizer.step_epochs = (50.0,)
    config.train.batch_size = 16
    config.train.num_epochs = 100.0
    config.train.init_from = 'runs/imagenet_resnet50'
    return smoke(config) if is_smoke else config
