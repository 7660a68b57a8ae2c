"""Model registry and the (logits, features) contract every model keeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.models import CLASSIFIER, MODELS, build_model, init_variables, model_fields


def _params_count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name,size,kwargs', [
    ('linear', 8, {}),
    ('resnet8', 32, {'width': 8}),
    ('resnet50_imagenet', 32, {'width': 4, 'stage_sizes': (1, 1, 1, 1)}),
    ('vgg16_gap', 32, {'batch_norm': True, 'layers': (8, 'M', 16), 'extra_conv': 32}),
])
def test_logits_are_gap_of_features_through_classifier(name, size, kwargs):
    model = build_model(name, num_classes=7, **kwargs)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    variables = init_variables(model, jax.random.key(1), x)
    logits, features = jax.jit(model.apply)(variables, x)
    assert logits.shape == (2, 7) and features.ndim == 4
    w = variables['params'][CLASSIFIER]['kernel']
    b = variables['params'][CLASSIFIER]['bias']
    cams = jnp.einsum('bhwc,ck->bkhw', features, w)  # M = features @ W
    np.testing.assert_allclose(cams.mean(axis=(2, 3)) + b, logits, rtol=1e-5, atol=1e-5)


def test_parameter_counts_match_the_papers():
    def count(name, size, classes, **kw):
        model = build_model(name, num_classes=classes, **kw)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
        return _params_count(shapes['params'])

    assert count('resnet20', 32, 10) == 269_722         # He et al.: 0.27M
    assert round(count('resnet56', 32, 10) / 1e6, 2) == 0.85
    assert round(count('resnet110', 32, 10) / 1e6, 1) == 1.7
    assert count('resnet18_imagenet', 64, 1000) == 11_689_512  # torchvision resnet18
    assert count('resnet50_imagenet', 64, 1000) == 25_557_032  # torchvision resnet50


def test_feature_resolution():
    def feature_shape(name, size, **kw):
        model = build_model(name, num_classes=3, **kw)
        x = jnp.zeros((1, size, size, 3))
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        return jax.eval_shape(model.apply, variables, x)[1].shape

    assert feature_shape('resnet20', 32) == (1, 8, 8, 64)
    assert feature_shape('resnet8', 64, stem_stride=2) == (1, 8, 8, 64)
    assert feature_shape('vgg16_gap', 224, extra_conv=0, layers=(8, 'M', 8, 'M', 8, 'M', 8, 'M',
                                                                   8)) == (1, 14, 14, 8)


def test_batchnorm_updates_only_in_train_mode():
    model = build_model('resnet8', num_classes=3, width=4)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3)) * 3 + 1
    variables = init_variables(model, jax.random.key(1), x)
    _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
        variables, x)
    before = jax.tree.leaves(variables['batch_stats'])
    after = jax.tree.leaves(updates['batch_stats'])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_bfloat16_compute_keeps_float32_logits_and_params():
    model = build_model('resnet8', num_classes=3, width=4, dtype='bfloat16')
    x = jnp.ones((2, 16, 16, 3))
    variables = init_variables(model, jax.random.key(0), x)
    logits, features = jax.jit(model.apply)(variables, x)
    assert features.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))


def test_registry():
    assert {'linear', 'resnet20', 'resnet56', 'resnet110', 'resnet18_imagenet',
            'resnet50_imagenet', 'resnet101_imagenet', 'resnet152_imagenet',
            'vgg16_gap'} <= set(MODELS)
    assert model_fields('resnet20') >= {'width', 'depth', 'dtype', 'conv_impl'}
    with pytest.raises(KeyError, match='unknown model'):
        build_model('nope', num_classes=3)
