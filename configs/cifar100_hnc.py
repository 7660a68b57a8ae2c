"""HNC on CIFAR-100 (HNC paper, Sec. 4.1, Table 1): CIFAR ResNet-56/110 with
CE, CE + HNC_mse or CE + HNC_kd; 164 epochs, lr 0.1 divided by 10 at epochs
84 and 122, batch 128, SGD momentum 0.9.

  --config=configs/cifar100_hnc.py:resnet110,hnc_kd

Needs CIFAR-100 prepared as array_record under dataset.data_dir
(`tfds build cifar100 --file_format=array_record`).
The paper's CIFAR lambdas are not restated in our issue; the ImageNet values
(0.07 mse, 0.0065 kd) are the starting point here, k = 10 of 99 negatives.
"""

from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

OPTIONS = {'model': ('resnet56', 'resnet110'), 'loss': ('ce', 'hnc_mse', 'hnc_kd')}
SMOKE = ('resnet110,hnc_mse,smoke', 'resnet56,hnc_kd,smoke')
HNC_TERMS = {'ce': (), 'hnc_mse': (dict(name='hnc_mse', weight=0.07, k=10),),
             'hnc_kd': (dict(name='hnc_kd', weight=0.0065, k=10),)}


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    config.dataset.name = 'tfds:cifar100'
    config.dataset.image_size = 32
    config.dataset.mean = (0.5071, 0.4865, 0.4409)
    config.dataset.std = (0.2673, 0.2564, 0.2762)
    config.model = dict(name=choice['model'])
    config.loss = (dict(name='cross_entropy'),) + HNC_TERMS[choice['loss']]
    config.optimizer.learning_rate = 0.1
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = 'step'
    config.optimizer.step_epochs = (84.0, 122.0)
    config.train.batch_size = 128
    config.train.num_epochs = 164.0
    return smoke(config) if is_smoke else config
