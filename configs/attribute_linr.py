"""LinR on pedestrian attributes (LinR paper, Sec. 4.6): PETA (19,000 images,
35 attributes) or PA-100k (100,000 images, 26 attributes). Multi-label
ImageNet ResNet-50 at 224px with the weighted sigmoid CE of the HNC paper
(Eq. 8); T = 3 rounds of one epoch, P1 and P2 per-attribute sigmoid outputs
and the Bernoulli KL summed over attributes.

  python -m camjax.main --config=configs/attribute_linr.py:peta,train   # baseline
  python -m camjax.main --config=configs/attribute_linr.py:peta         # LinR
  (pa100k instead of peta for PA-100k)

The data is an attribute folder at data/peta or data/pa100k: images under
images/, and train.csv / test.csv with header `image,<attribute>,...` and 0/1
values.
"""

from camjax.config.presets import imagenet_input, linr_refinement
from camjax.config.schema import base_config
from camjax.config.variants import choose, smoke

OPTIONS = {'dataset': ('peta', 'pa100k'), 'mode': ('refine', 'train')}
SMOKE = ('peta,smoke', 'pa100k,train,smoke')


def get_config(arg=None):
    choice, is_smoke = choose(arg, OPTIONS)
    config = base_config()
    config.dataset.name = f'attrfolder:data/{choice["dataset"]}'
    imagenet_input(config.dataset)
    config.dataset.random_flip = True
    config.model = dict(name='resnet50_imagenet', dtype='bfloat16')
    config.loss = (dict(name='weighted_sigmoid_ce'),)
    config.train.batch_size = 64
    if choice['mode'] == 'train':  # Rethinking-PAR's baseline: 30 epochs, SGD lr 0.01, cosine
        config.optimizer.learning_rate = 0.01
        config.optimizer.nesterov = False
        config.train.num_epochs = 30.0
    else:  # refines the baseline's default workdir
        linr_refinement(config, variant='linr', rounds=3,
                        init_from=f'runs/attribute_linr_{choice["dataset"]}-train')
    return smoke(config) if is_smoke else config
