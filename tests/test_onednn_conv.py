"""conv_impl='onednn' (camjax/models/onednn_conv.py) is nn.Conv run by oneDNN through
the XLA FFI: same parameters, same outputs and gradients to float32 rounding.
Skipped when the extension cannot be built here (no oneDNN wheels, headers
or C++ compiler: pip install -e '.[onednn]')."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax.models import onednn_conv as oc
from camjax.models.fast_conv import FastConv

OnednnConv = functools.partial(FastConv, cpu_kernels='onednn')


@pytest.fixture(scope='module', autouse=True)
def built():
    if not oc.available():
        pytest.skip("oneDNN conv extension not available (pip install -e '.[onednn]' "
                    'and a C++ compiler)')


def close(a, b, rtol=1e-5):
    """Within `rtol` of the reference's largest magnitude (float32 rounding)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize('pieces', ['0', '8'])
@pytest.mark.parametrize('kernel,strides,padding,features,shape', [
    ((3, 3), 1, 1, 8, (4, 12, 12, 5)),
    ((3, 3), 2, 1, 6, (4, 12, 12, 5)),
    ((1, 1), 2, 0, 7, (3, 10, 10, 4)),
    ((1, 1), 1, 'SAME', 7, (3, 9, 9, 4)),
    ((7, 7), 2, 3, 4, (2, 16, 16, 3)),
    ((3, 3), 1, 'VALID', 5, (7, 8, 8, 2)),  # a batch no piece count divides
    ((3, 3), (2, 1), ((0, 1), (2, 0)), 3, (9, 11, 7, 3)),  # uneven stride and padding
])
def test_matches_nn_conv(kernel, strides, padding, features, shape, pieces, monkeypatch):
    monkeypatch.setenv('CAMJAX_ONEDNN_PIECES', pieces)
    x = jax.random.normal(jax.random.key(0), shape)
    ref = nn.Conv(features, kernel, strides, padding=padding, use_bias=True)
    mine = OnednnConv(features, kernel, strides, padding=padding, use_bias=True)
    variables = ref.init(jax.random.key(1), x)
    assert (jax.tree.map(jnp.shape, variables)
            == jax.tree.map(jnp.shape, mine.init(jax.random.key(1), x)))
    close(mine.apply(variables, x), ref.apply(variables, x))

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

    g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(variables, x)
    g_mine = jax.jit(jax.grad(loss(mine), argnums=(0, 1)))(variables, x)
    for a, b in zip(jax.tree.leaves(g_mine), jax.tree.leaves(g_ref), strict=True):
        close(a, b)


def test_float32_runs_in_onednn_on_cpu():
    x, k = jnp.zeros((2, 8, 8, 3)), jnp.zeros((3, 3, 3, 4))
    loss = lambda x, k: jnp.sum(oc.conv(x, k, (1, 1), ((1, 1), (1, 1))))
    text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, k).as_text()
    if jax.default_backend() == 'cpu':
        for target in ('OnednnConvFwd', 'OnednnConvBwdData', 'OnednnConvBwdWeights'):
            assert f'custom_call @camjax_onednn_conv_{target}' in text


def test_deterministic_and_named_like_nn_conv():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return OnednnConv(4, (3, 3), use_bias=False)(OnednnConv(4, (3, 3))(x))

    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
    variables = Net().init(jax.random.key(1), x)
    assert set(variables['params']) == {'Conv_0', 'Conv_1'}
    grad = jax.jit(jax.grad(lambda v: jnp.sum(Net().apply(v, x) ** 2)))
    a, b = grad(variables), grad(variables)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


def test_bfloat16_falls_back_to_fast_conv():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    conv = OnednnConv(4, (3, 3), dtype=jnp.bfloat16)
    ref = nn.Conv(4, (3, 3), dtype=jnp.bfloat16)
    variables = ref.init(jax.random.key(1), x)
    y = conv.apply(variables, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(y), np.float32(ref.apply(variables, x)), atol=2e-2)


def test_inside_shard_map_as_the_loss_landscape_calls_it():
    # The landscape evaluates models inside shard_map; there the FFI result
    # must vary over the mesh axes as lax's conv does, and the gradient of a
    # replicated kernel is summed over the batch shards (it was a TypeError).
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    mesh = jax.make_mesh((1,), ('data',))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)
    pads = ((1, 1), (1, 1))

    def loss(conv, x, k):
        return jnp.sum(jnp.tanh(conv(x, k, (1, 1), pads)))

    def lax_conv(x, k, strides, pads):
        return jax.lax.conv_general_dilated(x, k, strides, pads,
                                            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

    def local(conv):
        def f(x, k):
            value, (dx, dk) = jax.value_and_grad(functools.partial(loss, conv),
                                                 argnums=(0, 1))(x, k)
            return jax.lax.psum(value, 'data'), dx, dk
        return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P('data'), P()),
                                     out_specs=(P(), P('data'), P())))

    x = jax.device_put(x, NamedSharding(mesh, P('data')))
    k = jax.device_put(k, NamedSharding(mesh, P()))
    got, want = local(oc.conv)(x, k), local(lax_conv)(x, k)
    for a, b in zip(got, want, strict=True):
        close(a, b)
