"""The CIFAR models of the LinR paper (Tables 2 and 3): vgg19, vgg19_bn,
alexnet_cifar, densenet121_cifar.

Full-size models are only traced (`jax.eval_shape`); anything that runs uses
narrow versions, so the file stays fast on CPU.

Expected parameter counts are derived from the architectures below and checked
against the reference PyTorch implementations with 10 classes:
- vgg19 / vgg19_bn: bearpaw/pytorch-classification `cifar/vgg.py` (config E,
  Linear(512, 10)); its README lists VGG-19 (BN) at 20.04M = 20,040,522, which
  includes 5,504 conv biases in front of BatchNorm that camjax omits (zero
  gradient there), so vgg19_bn has 20,035,018 and vgg19 (biases, no BN) 20,029,514.
- alexnet_cifar: bearpaw `cifar/alexnet.py`, 2.47M = 2,472,266 (same Linear(256, 10)).
- densenet121_cifar: kuangliu/pytorch-cifar `DenseNet121()`, 6,956,298.
The CAM head replaces each reference's final pool + flatten + Linear by GAP +
the same Linear, so it adds no parameters.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.models import CLASSIFIER, MODELS, build_model, init_variables, model_fields

LINR_MODELS = ('vgg19', 'vgg19_bn', 'alexnet_cifar', 'densenet121_cifar')
# Narrow versions that run in a second or two on CPU.
SMALL = {
    'vgg19': {'layers': (8, 'M', 8, 'M', 16)},
    'vgg19_bn': {'layers': (8, 'M', 8, 'M', 16)},
    'alexnet_cifar': {'width': 4},
    'densenet121_cifar': {'width': 4, 'stage_sizes': (2, 1, 1, 1)},
}
VGG19_E = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M',
           512, 512, 512, 512, 'M')


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def _shapes(name, size=32, classes=10, **kw):
    model = build_model(name, num_classes=classes, **kw)
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits, features = jax.eval_shape(model.apply, variables, x)
    return variables, logits.shape, features.shape


# ---- expected counts from the architecture formulas --------------------------------------

def _vgg_params(config, *, batch_norm, classes=10):
    total, cin = 0, 3
    for c in config:
        if c == 'M':
            continue
        total += 9 * cin * c + (2 * c if batch_norm else c)  # BN (scale, bias) or conv bias
        cin = c
    return total + cin * classes + classes


def _alexnet_params(width=64, classes=10):
    c1, c2, c3, c4, c5 = (m * width for m in (1, 3, 6, 4, 4))
    convs = [(11, 3, c1), (5, c1, c2), (3, c2, c3), (3, c3, c4), (3, c4, c5)]
    return sum(k * k * i * o + o for k, i, o in convs) + c5 * classes + classes


def _densenet_params(k=32, blocks=(6, 12, 24, 16), reduction=0.5, classes=10):
    c = 2 * k
    total = 9 * 3 * c  # stem, no bias
    for i, n in enumerate(blocks):
        for _ in range(n):  # BN(c) 1x1(c->4k) BN(4k) 3x3(4k->k)
            total += 2 * c + c * 4 * k + 2 * 4 * k + 9 * 4 * k * k
            c += k
        if i < len(blocks) - 1:  # BN(c) 1x1(c->floor(c * reduction))
            out = math.floor(c * reduction)
            total += 2 * c + c * out
            c = out
    return total + 2 * c + c * classes + classes  # final BN, classifier


def test_expected_counts_match_the_reference_implementations():
    # The formulas above against the PyTorch references' counts (module docstring).
    assert _vgg_params(VGG19_E, batch_norm=True) + 5_504 == 20_040_522  # bearpaw vgg19_bn
    assert _vgg_params(VGG19_E, batch_norm=False) == 20_029_514
    assert _alexnet_params() == 2_472_266
    assert _densenet_params() == 6_956_298


@pytest.mark.parametrize('name,expected', [
    ('vgg19', 20_029_514),
    ('vgg19_bn', 20_035_018),
    ('alexnet_cifar', 2_472_266),
    ('densenet121_cifar', 6_956_298),
])
def test_parameter_counts(name, expected):
    variables, _, _ = _shapes(name)
    assert _count(variables['params']) == expected
    # The CAM head is the reference's last Linear: C -> 10.
    classifier = variables['params'][CLASSIFIER]
    assert classifier['kernel'].shape[1] == 10 and classifier['bias'].shape == (10,)


def test_parameter_counts_follow_the_formulas_at_other_sizes():
    assert _count(_shapes('alexnet_cifar', width=8, classes=100)[0]['params']) == \
        _alexnet_params(8, 100)
    assert _count(_shapes('densenet121_cifar', width=12, stage_sizes=(2, 3, 4, 2),
                          classes=100)[0]['params']) == _densenet_params(12, (2, 3, 4, 2),
                                                                         classes=100)


@pytest.mark.parametrize('name,features', [
    ('vgg19', (1, 2, 2, 512)),           # 4 max-pools: final pool dropped
    ('vgg19_bn', (1, 2, 2, 512)),
    ('alexnet_cifar', (1, 2, 2, 256)),   # /4 conv, 2 max-pools: final pool dropped
    ('densenet121_cifar', (1, 4, 4, 1024)),  # 3 transitions; 64 + 16*32 = 576 -> 1024 channels
])
def test_cam_feature_maps_at_32px(name, features):
    _, logits, feats = _shapes(name)
    assert logits == (1, 10) and feats == features


@pytest.mark.parametrize('name', LINR_MODELS)
def test_logits_are_gap_of_features_through_classifier(name):
    model = build_model(name, num_classes=10, **SMALL[name])
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = init_variables(model, jax.random.key(1), x)
    logits, features = jax.jit(model.apply)(variables, x)
    assert logits.shape == (2, 10)
    assert features.shape[1] >= 2 and features.shape[2] >= 2
    w = variables['params'][CLASSIFIER]['kernel']
    b = variables['params'][CLASSIFIER]['bias']
    np.testing.assert_allclose(features.mean(axis=(1, 2)) @ w + b, logits, rtol=1e-5, atol=1e-5)
    assert float(jnp.std(logits)) > 0  # not a constant network


def test_batchnorm_only_in_vgg19_bn():
    plain, _, _ = _shapes('vgg19')
    bn, _, _ = _shapes('vgg19_bn')
    assert 'batch_stats' not in plain
    assert not any(k.startswith('BatchNorm') for k in plain['params'])
    assert len([k for k in bn['params'] if k.startswith('BatchNorm')]) == 16
    convs = [k for k in plain['params'] if k.startswith('Conv')]
    assert len(convs) == 16
    # Convs carry a bias without BN, and none in front of BN.
    assert all('bias' in plain['params'][k] for k in convs)
    assert not any('bias' in bn['params'][k] for k in bn['params'] if k.startswith('Conv'))


@pytest.mark.parametrize('name', ['vgg19_bn', 'densenet121_cifar'])
def test_train_mode_updates_batch_stats(name):
    model = build_model(name, num_classes=10, **SMALL[name])
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3)) * 3 + 1
    variables = init_variables(model, jax.random.key(1), x)
    (train_logits, _), updates = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, x)
    before = jax.tree.leaves(variables['batch_stats'])
    after = jax.tree.leaves(updates['batch_stats'])
    assert len(before) == len(after) > 0
    assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    # Train mode normalizes with batch statistics, eval mode with the running ones.
    eval_logits, _ = jax.jit(model.apply)(variables, x)
    assert not np.allclose(eval_logits, train_logits)


@pytest.mark.parametrize('name', LINR_MODELS)
def test_smoke_config_makes_the_model_tiny(name):
    from camjax.config.schema import base_config
    from camjax.config.variants import smoke
    config = base_config()
    config.model = dict(name=name)
    config = smoke(config)
    kwargs = {k: v for k, v in config.model.items() if k != 'name'}
    assert {'width', 'layers'} & set(kwargs)  # smoke found a width-like field to shrink
    variables, logits, features = _shapes(name, size=config.dataset.image_size, **kwargs)
    assert _count(variables['params']) < 50_000
    assert logits == (1, 10) and features[1] >= 2 and features[2] >= 2


def test_fast_conv_matches_xla_on_alexnet_strided_11x11():
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    xla = build_model('alexnet_cifar', num_classes=10, width=4, conv_impl='xla')
    fast = build_model('alexnet_cifar', num_classes=10, width=4, conv_impl='fast')
    variables = init_variables(xla, jax.random.key(1), x)

    def loss_and_grad(model):
        loss = lambda p: jnp.sum(model.apply({'params': p}, x)[0] ** 2)
        return jax.jit(jax.value_and_grad(loss))(variables['params'])

    (l1, g1), (l2, g2) = loss_and_grad(xla), loss_and_grad(fast)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)


def test_bfloat16_compute_keeps_float32_logits_and_params():
    model = build_model('densenet121_cifar', num_classes=10, width=4, stage_sizes=(1, 1, 1, 1),
                        dtype='bfloat16')
    x = jnp.ones((2, 32, 32, 3))
    variables = init_variables(model, jax.random.key(0), x)
    logits, features = jax.jit(model.apply)(variables, x)
    assert features.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))


def test_registry_and_fields():
    assert set(LINR_MODELS) <= set(MODELS)
    assert model_fields('vgg19') == {'layers', 'batch_norm', 'dtype', 'conv_impl'}
    assert model_fields('vgg19_bn') == model_fields('vgg19')
    assert build_model('vgg19_bn', num_classes=3).batch_norm
    assert not build_model('vgg19', num_classes=3).batch_norm
    assert model_fields('alexnet_cifar') == {'width', 'dtype', 'conv_impl'}
    assert model_fields('densenet121_cifar') == {'width', 'stage_sizes', 'reduction', 'dtype',
                                                 'conv_impl'}
    dense = build_model('densenet121_cifar', num_classes=3)
    assert (dense.width, tuple(dense.stage_sizes), dense.reduction) == (32, (6, 12, 24, 16), 0.5)
