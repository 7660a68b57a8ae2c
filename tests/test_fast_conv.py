"""FastConv is nn.Conv with another weight-gradient formulation: same
parameters, same outputs and gradients to float32 rounding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.models import build_model, init_variables
from camjax.models.fast_conv import FastConv


@pytest.mark.parametrize('kernel,strides,padding,features,shape', [
    ((3, 3), 1, 1, 8, (4, 12, 12, 5)),
    ((3, 3), 2, 1, 6, (4, 12, 12, 5)),
    ((1, 1), 2, 0, 7, (3, 10, 10, 4)),
    ((1, 1), 1, 'SAME', 7, (3, 9, 9, 4)),
    ((7, 7), 2, 3, 4, (2, 16, 16, 3)),
    ((3, 3), 1, 'VALID', 5, (20, 8, 8, 2)),  # more images than one chunk
    ((3, 3), 1, 1, 6, (4, 2, 2, 5)),  # outputs below the kernel: patches @ kernel
    ((3, 3), 2, 1, 6, (4, 3, 3, 5)),
    ((3, 3), 1, 1, 6, (4, 1, 1, 5)),
])
def test_matches_nn_conv(kernel, strides, padding, features, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    ref = nn.Conv(features, kernel, strides, padding=padding, use_bias=True)
    fast = FastConv(features, kernel, strides, padding=padding, use_bias=True)
    variables = ref.init(jax.random.key(1), x)
    assert jax.tree.structure(variables) == jax.tree.structure(fast.init(jax.random.key(1), x))

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

    np.testing.assert_allclose(fast.apply(variables, x), ref.apply(variables, x), atol=1e-5)
    g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(variables, x)
    g_fast = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))(variables, x)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('impl', ['fast', 'onednn'])
def test_resnet_with_fast_conv_matches_xla_conv(impl):
    if impl == 'onednn':
        from camjax.models import onednn_conv
        if not onednn_conv.available():
            pytest.skip("oneDNN conv not available (pip install -e '.[onednn]')")
    x = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
    xla = build_model('resnet8', num_classes=5, width=4, conv_impl='xla')
    fast = build_model('resnet8', num_classes=5, width=4, conv_impl=impl)
    variables = init_variables(xla, jax.random.key(3), x)

    def loss(model):
        def f(params):
            (logits, _), _ = model.apply({**variables, 'params': params}, x, train=True,
                                         mutable=['batch_stats'])
            return jnp.mean(jax.nn.log_softmax(logits)[:, 0])
        return jax.jit(jax.value_and_grad(f))

    (l_xla, g_xla), (l_fast, g_fast) = (loss(m)(variables['params']) for m in (xla, fast))
    np.testing.assert_allclose(l_fast, l_xla, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_xla), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
