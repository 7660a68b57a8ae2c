"""LinR losses (LinR paper, Eqs. 7, 9, 10) against numpy references, and the
stop-gradient on P2 in the LinR objective."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from camjax import losses
from camjax.config.schema import base_config
from camjax.models import build_model, init_variables
from camjax.training.refine import linr_loss


def _probs(rng, shape, sharp=1.0):
    return np.asarray(jax.nn.softmax(sharp * rng.standard_normal(shape), axis=-1))


def _kl(p, q):
    return np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-12)) - np.log(q)), 0.0), -1)


@pytest.mark.parametrize('dis,direction', [('kl', 'p1_p2'), ('kl', 'p2_p1'), ('mse', 'p1_p2')])
def test_distance_of_a_distribution_to_itself_is_zero(dis, direction):
    p = _probs(np.random.default_rng(0), (6, 10))
    assert float(losses.linr_divergence(p1=p, p2=p, dis=dis, direction=direction)) == \
        pytest.approx(0.0, abs=1e-7)
    sig = np.random.default_rng(1).uniform(0.01, 0.99, (6, 10))
    assert float(losses.linr_divergence(p1=sig, p2=sig, multilabel=True)) == \
        pytest.approx(0.0, abs=1e-6)


def test_kl_is_non_negative_and_matches_numpy_in_both_directions():
    rng = np.random.default_rng(2)
    for trial in range(20):
        p1, p2 = _probs(rng, (8, 7), sharp=3.0), _probs(rng, (8, 7), sharp=3.0)
        literal = np.asarray(losses.linr_divergence_per_example(p1=p1, p2=p2))
        pseudo = np.asarray(losses.linr_divergence_per_example(p1=p1, p2=p2, direction='p2_p1'))
        assert literal.min() >= -1e-6 and pseudo.min() >= -1e-6, trial
        np.testing.assert_allclose(literal, _kl(p1, p2), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pseudo, _kl(p2, p1), rtol=1e-5, atol=1e-6)
    mse = losses.linr_divergence(p1=p1, p2=p2, dis='mse')
    assert float(mse) == pytest.approx(np.mean(np.sum((p1 - p2) ** 2, -1)), rel=1e-5)


def test_multilabel_is_the_bernoulli_kl_summed_over_attributes():
    rng = np.random.default_rng(3)
    p, q = rng.uniform(0.01, 0.99, (5, 4)), rng.uniform(0.01, 0.99, (5, 4))
    expected = np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), -1)
    got = losses.linr_divergence_per_example(p1=p, p2=q, multilabel=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.all(np.asarray(got) >= 0)


def test_zero_probabilities_give_finite_values_and_gradients():
    p1 = jnp.asarray([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    p2 = jnp.asarray([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    for direction in losses.LINR_DIRECTIONS:
        for multilabel in (False, True):
            value, grads = jax.value_and_grad(
                lambda a, b, d=direction, m=multilabel: losses.linr_divergence(
                    p1=a, p2=b, direction=d, multilabel=m), argnums=(0, 1))(p1, p2)
            assert np.isfinite(float(value)) and float(value) > 0
            assert all(np.all(np.isfinite(g)) for g in grads)


def test_linrc_mask_and_masked_sum_match_numpy():
    rng = np.random.default_rng(4)
    p1, p2 = _probs(rng, (16, 10), sharp=2.0), _probs(rng, (16, 10), sharp=2.0)
    mask = np.asarray(losses.linr_confidence_mask(p2=p2))
    np.testing.assert_array_equal(mask, p2 > 0.1)
    assert 0 < mask.mean() < 1
    got = losses.linr_divergence(p1=p1, p2=p2, mask=mask)
    terms = p1 * (np.log(p1) - np.log(p2))
    assert float(got) == pytest.approx(np.mean(np.sum(np.where(mask, terms, 0), -1)), rel=1e-5)


def test_linrnm_scale_is_a_constant_offset():
    """D_KL(f(ax) || a f(x)) = D_KL(f(ax) || f(x)) - log a (docstring of Eq. 10)."""
    rng = np.random.default_rng(5)
    p1, fx, a = _probs(rng, (4, 6)), _probs(rng, (4, 6)), 0.3
    got = losses.linr_divergence_per_example(p1=p1, p2=a * fx)
    np.testing.assert_allclose(got, _kl(p1, fx) - np.log(a), rtol=1e-5)


def _refine_cfg(**overrides):
    cfg = ml_collections.ConfigDict(base_config().refine.to_dict())
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize('variant', ['linr', 'linrc', 'linrnm'])
def test_gradient_through_p2_is_zero_unless_p2_gradient(variant):
    model = build_model('resnet8', num_classes=5, width=4)
    images = jnp.asarray(np.random.default_rng(6).standard_normal((8, 16, 16, 3)), jnp.float32)
    variables = init_variables(model, jax.random.key(0), images[:1])

    def grads(p2_gradient):
        cfg = _refine_cfg(variant=variant, p2_gradient=p2_gradient)
        return jax.grad(lambda p1_params, p2_params: linr_loss(
            model, cfg, params=p1_params, p2_params=p2_params,
            batch_stats=variables['batch_stats'], images=images, key=jax.random.key(1),
            multilabel=False)[0], argnums=(0, 1))(variables['params'], variables['params'])

    g1, g2 = grads(False)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(g2))
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g1)) > 0
    _, g2 = grads(True)
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g2)) > 0


def test_p2_of_the_permuted_batch_is_the_permuted_p2():
    """f(y) = f(x)[perm] in both BatchNorm modes, which lets the P2 pass
    forward x alone: check against forwarding the 2B batch [x; x[perm]]."""
    model = build_model('resnet8', num_classes=5, width=4)
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((8, 16, 16, 3)), jnp.float32)
    perm = jnp.asarray(rng.permutation(8))
    variables = init_variables(model, jax.random.key(0), x[:1])

    def logits(batch, train):
        if train:  # batch statistics
            return model.apply(variables, batch, train=True, mutable=['batch_stats'])[0][0]
        return model.apply(variables, batch, train=False)[0]

    for train in (False, True):
        both, alone = logits(jnp.concatenate([x, x[perm]]), train), logits(x, train)
        np.testing.assert_allclose(both[8:], alone[perm], rtol=1e-4, atol=1e-5)
