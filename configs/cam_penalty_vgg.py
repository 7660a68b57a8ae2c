"""L1 / L2 / sign-split penalties on the CAM classifier weights w_{c,k} of
VGG16-GAP (the CAM paper's localization network), to study how the penalty
changes CAM localization and the weight histograms.

  --config=configs/cam_penalty_vgg.py:cub,sign_split

CUB: batch 32, lr 0.003, SGD, 200 epochs. ImageNet: batch 40, lr 0.02, 200
epochs. The penalty strength is the term's weight (1e-4 here, the value to
sweep); sign_split penalizes positive weights with lam_pos and negative ones
with lam_neg.
"""

from camjax.config.presets import imagenet2012, imagenet_input
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

OPTIONS = {'data': ('cub', 'imagenet'), 'penalty': ('none', 'l1', 'l2', 'sign_split')}
SMOKE = ('cub,l1,smoke', 'imagenet,sign_split,smoke')
DATA = {'cub': (32, 0.003), 'imagenet': (40, 0.02)}  # batch, learning rate
PENALTY = {'none': (),
           'l1': (dict(name='classifier_penalty', weight=1e-4, form='l1'),),
           'l2': (dict(name='classifier_penalty', weight=1e-4, form='l2'),),
           'sign_split': (dict(name='classifier_penalty', weight=1e-4, form='sign_split',
                               lam_pos=1.0, lam_neg=1.0, split_norm='l1'),)}


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    batch, lr = DATA[choice['data']]
    config = base_config()
    if choice['data'] == 'imagenet':
        imagenet2012(config.dataset)
    else:
        config.dataset.name = 'tfds:caltech_birds2011'
        imagenet_input(config.dataset)
    config.model = dict(name='vgg16_gap')
    config.loss = (dict(name='cross_entropy'),) + PENALTY[choice['penalty']]
    config.optimizer.learning_rate = lr
    config.optimizer.nesterov = False
    config.optimizer.schedule = 'cosine'
    config.train.batch_size = batch
    config.train.num_epochs = 200.0
    return smoke(config) if is_smoke else config
