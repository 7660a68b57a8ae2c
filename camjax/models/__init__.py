"""Model registry: a config names a model, `build_model` makes it.

Every model is a flax linen Module with fields `num_classes` plus its own
hyperparameters, called as `model.apply(variables, images, train=...)` and
returning `(logits (B,K), features (B,H,W,C))`.
"""

import dataclasses
import functools

import jax

from camjax.models.alexnet import CifarAlexNet
from camjax.models.densenet import CifarDenseNet
from camjax.models.layers import CLASSIFIER, CONV_IMPLS, cam_head
from camjax.models.linear import SoftmaxRegression
from camjax.models.resnet import IMAGENET_STAGES, CifarResNet, ImageNetResNet
from camjax.models.vgg import CifarVGG, VGGGap

__all__ = ['CLASSIFIER', 'CONV_IMPLS', 'MODELS', 'build_model', 'cam_head', 'init_variables',
           'model_fields', 'run_init_once']


def _imagenet_resnet(depth):
    stages, bottleneck = IMAGENET_STAGES[depth]
    return functools.partial(ImageNetResNet, stage_sizes=stages, bottleneck=bottleneck)


MODELS = {
    'linear': SoftmaxRegression,
    'resnet8': functools.partial(CifarResNet, depth=8),
    'resnet20': functools.partial(CifarResNet, depth=20),
    'resnet56': functools.partial(CifarResNet, depth=56),
    'resnet110': functools.partial(CifarResNet, depth=110),
    **{f'resnet{d}_imagenet': _imagenet_resnet(d) for d in (18, 50, 101, 152)},
    'vgg16_gap': VGGGap,
    # CIFAR (32px) models of the LinR paper, Tables 2 and 3.
    'vgg19': CifarVGG,
    'vgg19_bn': functools.partial(CifarVGG, batch_norm=True),
    'alexnet_cifar': CifarAlexNet,
    'densenet121_cifar': CifarDenseNet,
}


def _module_class(name):
    factory = MODELS[name]
    return factory.func if isinstance(factory, functools.partial) else factory


def model_fields(name: str) -> set[str]:
    """Hyperparameters a config may set for model `name` (besides num_classes)."""
    cls = _module_class(name)
    return {f.name for f in dataclasses.fields(cls) if f.init} - {'parent', 'name', 'num_classes'}


def build_model(name: str, *, num_classes: int, **kwargs):
    if name not in MODELS:
        raise KeyError(f'unknown model {name!r}; registered: {sorted(MODELS)}')
    return MODELS[name](num_classes=num_classes, **kwargs)


def init_variables(model, rng, sample_input) -> dict:
    """`model.init(rng, sample_input, train=False)`, compiled.

    On XLA:CPU every threefry random op takes ~1.5 s to optimize (a ResNet-8
    init: 15 s), so init -- which runs once -- is compiled without backend
    optimization there (1.4 s). It stays deterministic; values differ from an
    optimized compile by float rounding (< 1e-7) only.
    """
    return run_init_once(functools.partial(model.init, train=False), rng, sample_input)


def run_init_once(init_fn, *args, out_shardings=None):
    """`jax.jit(init_fn, out_shardings=...)(*args)` for a function that runs
    once per process (initialization), compiled without backend optimization
    on XLA:CPU (see `init_variables`)."""
    init = jax.jit(init_fn, out_shardings=out_shardings)
    options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
    return init.lower(*args).compile(compiler_options=options)(*args)
