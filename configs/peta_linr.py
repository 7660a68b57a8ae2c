"""LinR on PETA (19,000 images, 35 attributes; LinR paper, Sec. 4.6): multi-label ResNet-50,
T = 3 rounds, P1 and P2 per-attribute sigmoid outputs and the Bernoulli KL
summed over attributes.

  python -m camjax.main --config=configs/peta_linr.py:train   # baseline
  python -m camjax.main --config=configs/peta_linr.py         # LinR

The data is an attribute folder at data/peta: images under images/, and
train.csv / test.csv with header `image,<attribute>,...` and 0/1 values.
"""

from camjax.config_presets import pedestrian_attribute_linr
from camjax.config_schema import base_config
from camjax.config_variants import choose, smoke

OPTIONS = {'mode': ('refine', 'train')}
SMOKE = ('smoke',)


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    pedestrian_attribute_linr(config, name='peta_linr', root='data/peta',
                              train=choice['mode'] == 'train')
    return smoke(config) if is_smoke else config
