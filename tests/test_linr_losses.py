"""LinR losses (LinR paper, Eqs. 6, 7, 9, 10) and every option the paper
leaves open (refine.mix_space, direction, reduction, log_probs, mix_per,
running_stats_from) against numpy references, and the stop-gradient on P2."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from camjax import losses
from camjax.config.schema import base_config
from camjax.models import build_model, init_variables
from camjax.training import collapse
from camjax.training.refine import linr_loss, log_prediction, mixed_prediction
from camjax.training.state import forward


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _kl(p, q):
    return np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) - np.log(q)), 0.0), -1)


def _refine_cfg(**overrides):
    cfg = ml_collections.ConfigDict(base_config().refine.to_dict())
    cfg.update(overrides)
    return cfg


def _bernoulli(p):
    return np.stack([p, 1 - p], -1)


# ---- the distance (Eq. 7, Eq. 9's mask, Table 6's MSE) ---------------------------------

def _log(p):
    return jnp.log(jnp.asarray(p, jnp.float32))


@pytest.mark.parametrize('dis,direction', [('kl', 'p1_p2'), ('kl', 'p2_p1'), ('mse', 'p1_p2')])
def test_distance_of_a_distribution_to_itself_is_zero(dis, direction):
    p = _softmax(np.random.default_rng(0).standard_normal((6, 10)))
    got = losses.linr_divergence(log_p1=_log(p), log_p2=_log(p), dis=dis, direction=direction)
    np.testing.assert_allclose(got, 0.0, atol=1e-6)
    sig = _bernoulli(np.random.default_rng(1).uniform(0.01, 0.99, (6, 10)))
    np.testing.assert_allclose(losses.linr_divergence(log_p1=_log(sig), log_p2=_log(sig)), 0.0,
                               atol=1e-6)


def test_kl_matches_numpy_in_both_directions_and_both_reductions():
    rng = np.random.default_rng(2)
    for trial in range(10):
        p1, p2 = (_softmax(3 * rng.standard_normal((8, 7))) for _ in range(2))
        for direction, reduction in itertools.product(losses.LINR_DIRECTIONS,
                                                      losses.LINR_REDUCTIONS):
            got = np.asarray(losses.linr_divergence(log_p1=_log(p1), log_p2=_log(p2),
                                                    direction=direction, reduction=reduction))
            want = _kl(p1, p2) if direction == 'p1_p2' else _kl(p2, p1)
            want = want / 7 if reduction == 'mean' else want
            assert got.min() >= -1e-6, trial
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    mse = losses.linr_divergence(log_p1=_log(p1), log_p2=_log(p2), dis='mse')
    np.testing.assert_allclose(mse, np.sum((p1 - p2) ** 2, -1), rtol=1e-5)


def test_multilabel_is_the_bernoulli_kl_summed_over_attributes():
    rng = np.random.default_rng(3)
    p, q = rng.uniform(0.01, 0.99, (5, 4)), rng.uniform(0.01, 0.99, (5, 4))
    expected = np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), -1)
    got = losses.linr_divergence(log_p1=_log(_bernoulli(p)), log_p2=_log(_bernoulli(q)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    mse = losses.linr_divergence(log_p1=_log(_bernoulli(p)), log_p2=_log(_bernoulli(q)),
                                 dis='mse')
    np.testing.assert_allclose(mse, np.sum((p - q) ** 2, -1), rtol=1e-5)


def test_linrc_mask_and_masked_sum_match_numpy():
    rng = np.random.default_rng(4)
    p1, p2 = (_softmax(2 * rng.standard_normal((16, 10))) for _ in range(2))
    mask = np.asarray(losses.linr_confidence_mask(log_p2=_log(p2)))
    np.testing.assert_array_equal(mask, p2 > 0.1)
    assert 0 < mask.mean() < 1
    got = losses.linr_divergence(log_p1=_log(p1), log_p2=_log(p2), where=mask)
    terms = p1 * (np.log(p1) - np.log(p2))
    np.testing.assert_allclose(got, np.sum(np.where(mask, terms, 0), -1), rtol=1e-5)


def test_linrnm_scale_is_a_constant_offset():
    """D_KL(f(ax) || a f(x)) = D_KL(f(ax) || f(x)) - log a (docstring of Eq. 10)."""
    rng = np.random.default_rng(5)
    p1, fx, a = _softmax(rng.standard_normal((4, 6))), _softmax(rng.standard_normal((4, 6))), 0.3
    got = losses.linr_divergence(log_p1=_log(p1), log_p2=_log(a * fx))
    np.testing.assert_allclose(got, _kl(p1, fx) - np.log(a), rtol=1e-5)


# ---- P2 and the log (Eq. 6 in probability or logit space; exact or clipped logs) ------------

def _numpy_p2(variant, mix_space, z, perm, a, multilabel):
    predict = _sigmoid if multilabel else _softmax
    nm = variant == 'linrnm'
    if mix_space == 'logits':
        return predict(a * z if nm else a * z + (1 - a) * z[perm])
    p = predict(z)
    return a * p if nm else a * p + (1 - a) * p[perm]


@pytest.mark.parametrize('variant,mix_space,per_example,multilabel', [
    (v, s, e, m) for v in ('linr', 'linrnm') for s in ('probs', 'logits')
    for e in (False, True) for m in (False, True)])
def test_mixed_prediction_matches_numpy(variant, mix_space, per_example, multilabel):
    rng = np.random.default_rng(6)
    z = 3 * rng.standard_normal((8, 5))
    perm = rng.permutation(8)
    a = rng.uniform(0.05, 0.95, (8, 1)) if per_example else 0.3
    cfg = _refine_cfg(variant=variant, mix_space=mix_space)
    want = _numpy_p2(variant, mix_space, z, perm, a, multilabel)
    for log_probs in ('exact', 'clipped'):
        cfg.log_probs = log_probs
        got = mixed_prediction(cfg, jnp.asarray(z, jnp.float32), jnp.asarray(perm),
                               jnp.asarray(a, jnp.float32), multilabel=multilabel)
        want_log = np.log(_bernoulli(want) if multilabel else want)
        np.testing.assert_allclose(got, want_log, rtol=1e-4, atol=1e-5)


def test_exact_log_keeps_the_gradient_that_the_clipped_log_loses():
    """A class P1 gives less than 1e-12 but P2 wants: D_KL(P2 || P1) pulls it
    up only if log P1 is taken from the logits (log-softmax)."""
    z1 = jnp.asarray([[30.0, 0.0, 0.0]])  # P1 of classes 1, 2 ~ 1e-13
    log_p2 = jnp.log(jnp.asarray([[0.5, 0.5, 1e-8]]))

    def loss(z, clipped):
        log_p1 = log_prediction(z, multilabel=False, clipped=clipped)
        return losses.linr_divergence(log_p1=log_p1, log_p2=log_p2, direction='p2_p1')[0]

    exact = jax.grad(loss)(z1, False)
    clipped = jax.grad(loss)(z1, True)
    assert float(exact[0, 1]) == pytest.approx(-0.5, abs=1e-3)  # p1 - p2 on class 1
    assert abs(float(clipped[0, 1])) < 1e-10  # lost below the floor: 0 up to rounding
    assert float(loss(z1, False)) == pytest.approx(
        float(0.5 * np.log(0.5) * 2 - 0.5 * (30 - np.logaddexp.reduce([30, 0, 0]))
              - 0.5 * (0 - np.logaddexp.reduce([30, 0, 0]))), rel=1e-3)


# ---- the whole objective on a model -----------------------------------------------------

@pytest.fixture(scope='module')
def tiny():
    model = build_model('resnet8', num_classes=5, width=4)
    images = jnp.asarray(np.random.default_rng(6).standard_normal((8, 16, 16, 3)), jnp.float32)
    variables = init_variables(model, jax.random.key(0), images[:1])
    return model, images, variables


def _draws(cfg, key, batch):
    """linr_loss's a and permutation for `key` (its documented derivation)."""
    key_a, key_perm = jax.random.split(key)
    a = jax.random.beta(key_a, cfg.alpha, cfg.alpha,
                        shape=(batch, 1) if cfg.mix_per == 'example' else ())
    return np.asarray(a, np.float64), np.asarray(jax.random.permutation(key_perm, batch))


@pytest.mark.parametrize('variant,mix_space,direction,reduction,mix_per', [
    ('linr', 'probs', 'p1_p2', 'sum', 'batch'), ('linr', 'logits', 'p2_p1', 'mean', 'example'),
    ('linrc', 'probs', 'p2_p1', 'sum', 'example'), ('linrnm', 'logits', 'p1_p2', 'mean', 'batch')])
def test_linr_loss_matches_numpy_from_the_models_logits(tiny, variant, mix_space, direction,
                                                        reduction, mix_per):
    model, images, variables = tiny
    cfg = _refine_cfg(variant=variant, mix_space=mix_space, direction=direction,
                      reduction=reduction, mix_per=mix_per, alpha=1.0, p2_batchnorm='running',
                      running_stats_from='mixed')  # P2 from running statistics, as below
    key = jax.random.key(3)
    loss, (_, metrics) = linr_loss(model, cfg, params=variables['params'],
                                   p2_params=variables['params'],
                                   batch_stats=variables['batch_stats'], images=images, key=key,
                                   multilabel=False)
    a, perm = _draws(cfg, key, images.shape[0])
    a_img = a[:, :, None, None] if mix_per == 'example' else a
    x = np.asarray(images, np.float64)
    mixed = a_img * x if variant == 'linrnm' else a_img * x + (1 - a_img) * x[perm]
    z_clean = np.asarray(forward(model, variables['params'], variables['batch_stats'], images,
                                 train=False)[0], np.float64)
    z_mixed = np.asarray(forward(model, variables['params'], variables['batch_stats'],
                                 jnp.asarray(mixed, jnp.float32), train=True)[0], np.float64)
    p1, p2 = _softmax(z_mixed), _numpy_p2(variant, mix_space, z_clean, perm, a, False)
    terms = p1 * (np.log(p1) - np.log(p2)) if direction == 'p1_p2' else \
        p2 * (np.log(p2) - np.log(p1))
    if variant == 'linrc':
        terms = np.where(p2 > 1 / 5, terms, 0.0)
        assert float(metrics['scored_fraction']) == pytest.approx(np.mean(p2 > 1 / 5))
    want = np.mean(terms.sum(-1) / (5 if reduction == 'mean' else 1))
    assert float(loss) == pytest.approx(want, rel=1e-4, abs=1e-6)
    # The collapse measures are those of the clean predictions.
    probs = _softmax(z_clean)
    share = np.max(np.bincount(probs.argmax(-1), minlength=5)) / 8
    assert float(metrics['collapse/top_class_share']) == pytest.approx(share)
    assert float(metrics['collapse/mean_max_prob']) == pytest.approx(probs.max(-1).mean(),
                                                                     rel=1e-5)
    mean = probs.mean(0)
    assert float(metrics['collapse/mean_prediction_entropy']) == pytest.approx(
        -np.sum(mean * np.log(mean)), rel=1e-5)


@pytest.mark.parametrize('source', ['mixed', 'clean', 'both', 'none'])
def test_running_statistics_come_from_the_configured_passes(tiny, source):
    model, images, variables = tiny
    cfg = _refine_cfg(running_stats_from=source, p2_batchnorm='batch')
    key = jax.random.key(4)
    _, (stats, _) = linr_loss(model, cfg, params=variables['params'],
                              p2_params=variables['params'], batch_stats=variables['batch_stats'],
                              images=images, key=key, multilabel=False)
    a, perm = _draws(cfg, key, images.shape[0])
    mixed = jnp.asarray(a * np.asarray(images) + (1 - a) * np.asarray(images)[perm], jnp.float32)
    params, start = variables['params'], variables['batch_stats']
    clean = forward(model, params, start, images, train=True)[2]
    want = {'none': start, 'clean': clean,
            'mixed': forward(model, params, start, mixed, train=True)[2],
            'both': forward(model, params, clean, mixed, train=True)[2]}[source]
    for got_leaf, want_leaf in zip(jax.tree.leaves(stats), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-6)
    if source != 'none':
        assert any(not np.allclose(x, y) for x, y in
                   zip(jax.tree.leaves(stats), jax.tree.leaves(start), strict=True))


def test_one_a_per_example_mixes_each_image_with_its_own_weight(tiny):
    cfg = _refine_cfg(mix_per='example', alpha=1.0)
    a, _ = _draws(cfg, jax.random.key(5), 8)
    assert a.shape == (8, 1) and len(np.unique(a)) == 8
    a, _ = _draws(_refine_cfg(), jax.random.key(5), 8)
    assert a.shape == ()


@pytest.mark.parametrize('variant', ['linr', 'linrc', 'linrnm'])
def test_gradient_through_p2_is_zero_unless_p2_gradient(tiny, variant):
    model, images, variables = tiny

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


def test_p2_of_the_permuted_batch_is_the_permuted_p2(tiny):
    """f(y) = f(x)[perm] in both BatchNorm modes, which lets the P2 pass
    forward x alone: check against forwarding the 2B batch [x; x[perm]]."""
    model, x, variables = tiny
    perm = jnp.asarray(np.random.default_rng(7).permutation(8))

    def logits(batch, train):
        if train:  # batch statistics
            return model.apply(variables, batch, train=True, mutable=['batch_stats'])[0][0]
        return model.apply(variables, batch, train=False)[0]

    for train in (False, True):
        both, alone = logits(jnp.concatenate([x, x[perm]]), train), logits(x, train)
        np.testing.assert_allclose(both[8:], alone[perm], rtol=1e-4, atol=1e-5)


# ---- collapse measures ----------------------------------------------------------------

def test_collapse_measures_of_a_constant_and_of_a_diverse_predictor():
    constant = collapse.measures(logits=jnp.tile(jnp.asarray([[5.0, 0, 0, 0]]), (16, 1)))
    assert float(constant['collapse/top_class_share']) == 1.0
    p = _softmax(np.asarray([5.0, 0, 0, 0]))
    assert float(constant['collapse/mean_max_prob']) == pytest.approx(p[0], rel=1e-5)
    assert float(constant['collapse/mean_prediction_entropy']) == pytest.approx(
        -np.sum(p * np.log(p)), rel=1e-5)
    diverse = collapse.measures(logits=20.0 * jnp.tile(jnp.eye(4), (4, 1)))
    assert float(diverse['collapse/top_class_share']) == 0.25
    assert float(diverse['collapse/mean_prediction_entropy']) == pytest.approx(np.log(4), rel=1e-5)
    assert float(diverse['collapse/mean_max_prob']) == pytest.approx(1.0, abs=1e-6)


def test_streak_counts_consecutive_collapsed_steps():
    streak = jnp.zeros((), jnp.int32)
    for share, want in ((0.95, 1), (0.99, 2), (0.5, 0), (0.9, 1)):
        streak = collapse.extend_streak(streak, {'collapse/top_class_share': jnp.float32(share)},
                                        0.9)
        assert int(streak) == want
