"""CAM-weight penalties on Tiny ImageNet (seed "Analysis of the effect of
regularization techniques on Class Activation Map") at a reduced, CPU-sized
budget: how L1, L2 and sign-split penalties on the CAM classifier weights
w_{c,k} change classification, CAM localization on the real boxes and the
weight histograms.

  --config=configs/tinyimagenet_cam_penalty.py:none
  --config=configs/tinyimagenet_cam_penalty.py:l1          # 1e-3 sum |w|
  --config=configs/tinyimagenet_cam_penalty.py:l2          # 1e-2 / 2 sum w^2
  --config=configs/tinyimagenet_cam_penalty.py:sign_split  # 1e-3 sum max(-w, 0)

The model is a CIFAR ResNet-20 with its stem stride set to 2 for the 64 px
images (He et al.'s 3 stages on a 32x32 map), so the CAMs are 8x8 before
upsampling; the classifier is 64 x 200. sign_split penalizes only the
negative weights (lam_pos = 0), the seed's hypothesis being that negative
weights hurt localization. 90,000 training images (10,000 held out for
validation), EPOCHS epochs, batch 128, SGD lr 0.1 Nesterov, weight decay
5e-4 (on every weight, W included), cosine decay, random crop and flip.
Evaluate with and without evaluation.positive_weights_only. The data is the
tiny-imagenet-200 folder, e.g. ../shared/data's archive unpacked to
data/tiny-imagenet-200 (or set dataset.name); its val set is the test split.
"""

from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

EPOCHS = 3.0
PENALTY = {'none': (),
           'l1': (dict(name='classifier_penalty', weight=1e-3, form='l1'),),
           'l2': (dict(name='classifier_penalty', weight=1e-2, form='l2'),),
           'sign_split': (dict(name='classifier_penalty', weight=1e-3, form='sign_split',
                               lam_pos=0.0, lam_neg=1.0, split_norm='l1'),)}
OPTIONS = {'penalty': tuple(PENALTY)}
SMOKE = ('sign_split,smoke',)


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    d = config.dataset
    d.name, d.image_size, d.crop_padding = 'tinyimagenet:data/tiny-imagenet-200', 64, 8
    d.mean, d.std = (0.480, 0.448, 0.398), (0.277, 0.269, 0.282)
    config.model = dict(name='resnet20', stem_stride=2, conv_impl='auto')
    config.loss = (dict(name='cross_entropy'),) + PENALTY[choice['penalty']]
    config.train.num_epochs = EPOCHS
    config.evaluation.landscape_batches = 0
    return smoke(config) if is_smoke else config
