"""HNC losses, CAMs, negative selection, CAM-weight penalties and weighted SCE
against the HNC paper's closed forms (Eqs. 2, 5, 8, 10-12, Proposition 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax import losses, objectives
from camjax.errors import ConfigError
from camjax.models import build_model, init_variables

B, K, H, W, C = 3, 6, 4, 5, 7


def _random(shape, seed=0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _softmax_np(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_ce_gradient_wrt_cam_pixels_is_spatially_uniform():
    """Eq. 10: logits are mean_hw of the CAMs, so dCE/dM_o(h,w) = (p_o - y_o) / HW."""
    cams = _random((B, K, H, W))
    labels = jnp.array([0, 3, 5])

    def ce_of_cams(m):
        return jnp.sum(losses.softmax_cross_entropy(logits=m.mean(axis=(2, 3)), labels=labels))

    grad = jax.grad(ce_of_cams)(cams)
    p = _softmax_np(np.asarray(cams.mean(axis=(2, 3))))
    expected = (p - np.eye(K)[labels]) / (H * W)
    np.testing.assert_allclose(grad, np.broadcast_to(expected[:, :, None, None], grad.shape),
                               atol=1e-6)


@pytest.mark.parametrize('alpha', [0.0, 0.7])
def test_hnc_mse_value_and_gradient(alpha):
    """Eq. 2 / Eq. 11: gradient 2 beta (M - alpha), beta = 1/HW, divided by B*k
    for the mean over the batch and the k negatives."""
    k = 4
    cams = _random((B, k, H, W), seed=1)
    value = losses.hnc_mse(cams=cams, alpha=alpha)
    np.testing.assert_allclose(value, np.mean((np.asarray(cams) - alpha) ** 2), rtol=1e-6)
    grad = jax.grad(lambda m: losses.hnc_mse(cams=m, alpha=alpha))(cams)
    expected = 2 * (np.asarray(cams) - alpha) / (H * W) / (B * k)
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_hnc_kd_value_and_gradient():
    """Eq. 5 / Eq. 12: per map, -mean log softmax; gradient softmax(M) - 1/HW,
    divided by B for the batch mean."""
    k = 4
    cams = _random((B, k, H, W), seed=2, scale=3.0)
    flat = np.asarray(cams).reshape(B, k, -1)
    log_p = flat - flat.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    np.testing.assert_allclose(losses.hnc_kd(cams=cams), np.mean(np.sum(-log_p.mean(-1), -1)),
                               rtol=1e-6)
    grad = np.asarray(jax.grad(lambda m: losses.hnc_kd(cams=m))(cams)).reshape(B, k, -1)
    np.testing.assert_allclose(grad, (_softmax_np(flat) - 1 / (H * W)) / B, atol=1e-6)


@pytest.mark.parametrize('scale', [0.1, 1.0, 30.0, 1e4])
def test_proposition_1_and_stability(scale):
    """HNC_kd >= sum_o (max M_o - mean M_o), and finite for large activations."""
    cams = _random((8, 5, 7, 7), seed=3, scale=scale)
    per_example = np.asarray(losses.hnc_kd_per_example(cams=cams))
    m = np.asarray(cams)
    bound = (m.max(axis=(2, 3)) - m.mean(axis=(2, 3))).sum(axis=1)
    assert np.all(np.isfinite(per_example))
    assert np.all(per_example >= bound - 1e-4 * max(scale, 1))


def test_top_negatives_single_label():
    logits = _random((B, K), seed=4)
    labels = np.array([2, 0, 5])
    positives = jax.nn.one_hot(labels, K, dtype=bool)
    classes, valid = losses.top_negative_classes(logits=logits, positives=positives, k=K - 1)
    assert valid.all()
    for b in range(B):
        assert labels[b] not in np.asarray(classes[b])
        order = [c for c in np.argsort(-np.asarray(logits[b])) if c != labels[b]]
        np.testing.assert_array_equal(classes[b], order)


def test_top_negatives_multi_label_masks_missing_slots():
    rng = np.random.default_rng(5)
    positives = rng.random((20, K)) < 0.5
    positives[0] = True         # no negatives at all
    positives[1] = False        # no positives
    logits = _random((20, K), seed=6)
    k = 3
    classes, valid = losses.top_negative_classes(logits=logits, positives=jnp.asarray(positives),
                                                 k=k)
    classes, valid = np.asarray(classes), np.asarray(valid)
    for b in range(20):
        n_neg = K - positives[b].sum()
        assert valid[b].sum() == min(k, n_neg)
        assert not positives[b][classes[b][valid[b]]].any()  # never a positive in a used slot
    assert not valid[0].any() and valid[1].all()


def test_no_gradient_flows_through_the_selection():
    features = _random((B, H, W, C), seed=7)
    kernel, bias = _random((C, K), seed=8), _random((K,), seed=9)
    positives = jax.nn.one_hot(jnp.array([1, 2, 3]), K, dtype=bool)

    def loss(logits, features):
        classes, valid = losses.top_negative_classes(logits=logits, positives=positives, k=3)
        cams = losses.class_activation_maps(features=features, kernel=kernel, bias=bias,
                                            classes=classes)
        return losses.hnc_kd(cams=cams, valid=valid)

    g_logits, g_features = jax.grad(loss, argnums=(0, 1))(_random((B, K), seed=10), features)
    assert np.all(np.asarray(g_logits) == 0)
    assert np.abs(np.asarray(g_features)).sum() > 0


def test_cams_equal_full_einsum_then_gather_and_average_to_logits():
    model = build_model('resnet8', num_classes=K, width=4)
    x = _random((B, 16, 16, 3), seed=11)
    variables = init_variables(model, jax.random.key(0), x)
    logits, features = model.apply(variables, x)
    w = variables['params']['classifier']['kernel']
    b = variables['params']['classifier']['bias']
    classes = jnp.array([[0, 5], [3, 1], [2, 2]])
    cams = losses.class_activation_maps(features=features, kernel=w, bias=b, classes=classes)
    full = jnp.einsum('bhwc,ck->bkhw', features, w) + b[None, :, None, None]
    gathered = jnp.take_along_axis(full, classes[:, :, None, None], axis=1)
    np.testing.assert_allclose(cams, gathered, atol=1e-5)
    np.testing.assert_allclose(cams.mean(axis=(2, 3)),
                               jnp.take_along_axis(logits, classes, axis=1), atol=1e-5)


def test_cams_never_materialize_all_classes():
    """With K=1000 and k=100 no intermediate is as large as all K maps."""
    features = jnp.zeros((2, 7, 7, 64))
    kernel, bias = jnp.zeros((64, 1000)), jnp.zeros((1000,))
    classes = jnp.zeros((2, 100), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda f: losses.class_activation_maps(
        features=f, kernel=kernel, bias=bias, classes=classes))(features)
    sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars]
    assert 2 * 100 * 7 * 7 in sizes and max(sizes) < 2 * 1000 * 7 * 7


KERNEL = jnp.array([[1.0, -2.0], [0.5, 0.0], [-3.0, 4.0]])


@pytest.mark.parametrize('args,value,grad', [
    (dict(form='l1', lam=0.1), 0.1 * 10.5, 0.1 * np.sign(KERNEL)),
    (dict(form='l2', lam=0.1), 0.05 * 30.25, 0.1 * KERNEL),
    (dict(form='sign_split', lam_pos=0.2, lam_neg=0.5), 0.2 * 5.5 + 0.5 * 5.0,
     np.where(KERNEL > 0, 0.2, np.where(KERNEL < 0, -0.5, 0.0))),
    (dict(form='sign_split', lam_pos=0.2, lam_neg=0.5, split_norm='l2'),
     0.2 * 0.5 * 17.25 + 0.5 * 0.5 * 13.0, np.where(KERNEL > 0, 0.2, 0.5) * KERNEL),
])
def test_classifier_weight_penalties(args, value, grad):
    got = losses.classifier_weight_penalty(kernel=KERNEL, **args)
    np.testing.assert_allclose(got, value, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda k: losses.classifier_weight_penalty(
        kernel=k, **args))(KERNEL), grad, atol=1e-6)


def test_weighted_sigmoid_ce_matches_numpy_eq8():
    rng = np.random.default_rng(12)
    logits = rng.normal(size=(5, 4)) * 3
    labels = (rng.random((5, 4)) < 0.4).astype(np.float32)
    pos_rate = np.array([0.1, 0.5, 0.02, 0.3])
    p = 1 / (1 + np.exp(-logits))
    u = np.where(labels == 1, np.exp(1 - pos_rate), np.exp(pos_rate))
    n = logits.shape[1]  # Eq. 8: -(1/n) sum over the n classes, per image
    eq8 = -(1 / n) * np.sum(u * (labels * np.log(p) + (1 - labels) * np.log(1 - p)), axis=1)
    expected = np.mean(eq8)
    got = losses.weighted_sigmoid_ce(logits=jnp.asarray(logits, jnp.float32),
                                     labels=jnp.asarray(labels), pos_rate=jnp.asarray(pos_rate))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_objective_combines_weighted_terms_and_reports_each():
    terms = (dict(name='cross_entropy'), dict(name='hnc_kd', weight=0.5, k=2),
             dict(name='hnc_mse', weight=0.25, k=2, alpha=0.1),
             dict(name='classifier_penalty', weight=1e-2, form='l2'))
    objectives.validate_terms(terms, num_classes=K)
    features = _random((B, H, W, C), seed=13)
    kernel, bias = _random((C, K), seed=14), _random((K,), seed=15)
    labels = jnp.array([1, 4, 0])
    logits = features.mean(axis=(1, 2)) @ kernel + bias
    inputs = {'logits': logits, 'features': features, 'labels': labels,
              'classifier': {'kernel': kernel, 'bias': bias}}
    total, values = objectives.build_objective(terms)(inputs, jnp.ones(B))
    classes, _ = losses.top_negative_classes(
        logits=logits, positives=jax.nn.one_hot(labels, K, dtype=bool), k=2)
    cams = losses.class_activation_maps(features=features, kernel=kernel, bias=bias,
                                        classes=classes)
    expected = {
        'cross_entropy': jnp.mean(losses.softmax_cross_entropy(logits=logits, labels=labels)),
        'hnc_kd': 0.5 * losses.hnc_kd(cams=cams),
        'hnc_mse': 0.25 * losses.hnc_mse(cams=cams, alpha=0.1),
        'classifier_penalty': 1e-2 * 0.5 * jnp.sum(kernel ** 2)}
    for name, want in expected.items():
        np.testing.assert_allclose(values[name], want, rtol=1e-5)
    np.testing.assert_allclose(total, sum(expected.values()), rtol=1e-5)
    # Padding (weight 0) does not change per-example or masked terms.
    _, padded = objectives.build_objective(terms)(
        {**inputs, 'features': features.at[2].set(100.0)}, jnp.array([1.0, 1.0, 0.0]))
    inputs_2 = {k: (v[:2] if k != 'classifier' else v) for k, v in inputs.items()}
    _, first_two = objectives.build_objective(terms)(inputs_2, jnp.ones(2))
    for name in ('hnc_kd', 'hnc_mse'):
        np.testing.assert_allclose(padded[name], first_two[name], rtol=1e-5)


def test_k_must_leave_the_ground_truth_out():
    with pytest.raises(ConfigError, match=r'k=100 exceeds the 99 negative classes'):
        objectives.validate_terms((dict(name='cross_entropy'), dict(name='hnc_kd', k=100)),
                                  num_classes=100)
    objectives.validate_terms((dict(name='cross_entropy'), dict(name='hnc_kd', k=99)),
                              num_classes=100)
    with pytest.raises(ConfigError, match="form='l3'"):
        objectives.validate_terms((dict(name='cross_entropy'),
                                   dict(name='classifier_penalty', form='l3')))


def test_positive_weights_only_cams_clamp_negative_weights():
    """The one CAM function's positive-weights-only switch: M from max(W, 0),
    the bias off, and the input kernel untouched."""
    features = _random((2, 3, 3, C), seed=21)
    kernel, bias = _random((C, K), seed=22), _random((K,), seed=23)
    classes = jnp.array([[1, 3], [0, 4]])
    got = losses.class_activation_maps(features=features, kernel=kernel, classes=classes,
                                       positive_only=True)
    positive = np.maximum(np.asarray(kernel), 0)
    for b in range(2):
        for j in range(2):
            np.testing.assert_allclose(got[b, j], np.asarray(features[b]) @
                                       positive[:, int(classes[b, j])], rtol=1e-5, atol=1e-6)
    assert np.any(np.asarray(kernel) < 0)
    with_bias = losses.class_activation_maps(features=features, kernel=kernel, classes=classes,
                                             bias=bias)
    np.testing.assert_allclose(jnp.mean(with_bias, axis=(2, 3)),
                               jnp.take_along_axis(jnp.mean(features, (1, 2)) @ kernel + bias,
                                                   classes, axis=1), rtol=1e-5, atol=1e-6)
