"""The course-notes basics: textbook gradients of softmax and logistic
regression, the L2 gradient, and the metric helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from camjax import losses
from camjax.config.schema import base_config
from camjax.evaluation import metrics
from camjax.models import build_model
from camjax.training import optim


def _linear_setup(seed=0, batch=6, dim=5, classes=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim)).astype(np.float32)
    labels = rng.integers(0, classes, size=batch)
    model = build_model('linear', num_classes=classes)
    params = model.init(jax.random.key(seed), x[:, None, None, :])['params']
    return model, params, x, labels


def test_softmax_regression_gradient_is_textbook():
    """dCE/dW = -(y - y_hat) x^T, summed over the batch for the summed loss."""
    model, params, x, labels = _linear_setup()

    def loss(p):
        logits, _ = model.apply({'params': p}, x[:, None, None, :])
        return jnp.sum(losses.softmax_cross_entropy(logits=logits, labels=labels))

    grads = jax.grad(loss)(params)['classifier']
    logits, _ = model.apply({'params': params}, x[:, None, None, :])
    y = np.eye(4)[labels]
    y_hat = np.asarray(jax.nn.softmax(logits))
    np.testing.assert_allclose(grads['kernel'], -x.T @ (y - y_hat), atol=1e-6)
    np.testing.assert_allclose(grads['bias'], -(y - y_hat).sum(0), atol=1e-6)


def test_binary_logistic_gradient_is_textbook():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=8).astype(np.float32)
    w = rng.normal(size=3).astype(np.float32)

    def loss(w):
        return jnp.sum(losses.binary_logistic_loss(logits=x @ w, labels=y))

    y_hat = 1 / (1 + np.exp(-(x @ w)))
    np.testing.assert_allclose(jax.grad(loss)(w), -(y - y_hat) @ x, atol=1e-6)
    # Value against the direct formula too.
    direct = -np.sum(y * np.log(y_hat) + (1 - y) * np.log(1 - y_hat))
    np.testing.assert_allclose(loss(w), direct, rtol=1e-5)


def test_l2_penalty_gradient_adds_lambda_w():
    model, params, x, labels = _linear_setup(seed=2)
    lam = 0.3

    def data_loss(p):
        logits, _ = model.apply({'params': p}, x[:, None, None, :])
        return jnp.mean(losses.softmax_cross_entropy(logits=logits, labels=labels))

    g_data = jax.grad(data_loss)(params)
    g_total = jax.grad(lambda p: data_loss(p) + losses.l2_penalty(params=p, lam=lam))(params)
    for path in (('classifier', 'kernel'), ('classifier', 'bias')):
        a, b, w = (t[path[0]][path[1]] for t in (g_total, g_data, params))
        np.testing.assert_allclose(a, b + lam * w, atol=1e-6)


def test_sgd_weight_decay_is_coupled_l2():
    """optimizer.weight_decay on 'sgd' equals adding lam/2 ||w||^2 to the loss."""
    cfg = base_config().optimizer
    cfg.momentum, cfg.nesterov, cfg.weight_decay = 0.0, False, 0.1
    tx = optim.make_optimizer(cfg, optax.constant_schedule(0.5))
    w = {'w': jnp.array([1.0, -2.0])}
    g = {'w': jnp.array([0.2, 0.4])}
    updates, _ = tx.update(g, tx.init(w), w)
    np.testing.assert_allclose(updates['w'], -0.5 * (g['w'] + 0.1 * w['w']), atol=1e-7)


def test_label_smoothing_value():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    eps = 0.3
    logp = np.asarray(jax.nn.log_softmax(logits))[0]
    target = np.array([1 - eps + eps / 3, eps / 3, eps / 3])
    got = losses.softmax_cross_entropy(logits=logits, labels=jnp.array([0]), label_smoothing=eps)
    np.testing.assert_allclose(got, [-(target * logp).sum()], rtol=1e-6)


def test_topk_and_per_class_sums():
    logits = jnp.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    labels = jnp.array([1, 2, 0, 2])
    weights = jnp.array([1.0, 1.0, 1.0, 0.0])  # last example is padding
    np.testing.assert_array_equal(metrics.topk_correct(logits=logits, labels=labels, k=1),
                                  [1, 0, 0, 1])
    np.testing.assert_array_equal(metrics.topk_correct(logits=logits, labels=labels, k=2),
                                  [1, 0, 0, 1])  # a tie goes to the lower index
    sums = metrics.classification_sums(logits=logits, labels=labels, weights=weights,
                                       num_classes=3)
    summary = metrics.summarize({**sums, 'loss': jnp.array(3.0)})
    assert summary['count'] == 3
    assert summary['accuracy'] == pytest.approx(1 / 3)
    assert summary['loss'] == pytest.approx(1.0)
    assert summary['per_class_accuracy'] == [0.0, 1.0, 0.0]


def test_schedules():
    cfg = base_config().optimizer
    cfg.learning_rate, cfg.warmup_epochs = 1.0, 1.0
    cfg.schedule = 'step'
    cfg.step_epochs = (2.0, 3.0)
    s = optim.make_schedule(cfg, total_steps=40, steps_per_epoch=10, batch_size=64)
    assert [float(s(i)) for i in (0, 5, 10, 19, 20, 29, 30)] == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 0.1, 0.1, 0.01])
    cfg.schedule, cfg.warmup_epochs = 'cosine', 0.0
    s = optim.make_schedule(cfg, total_steps=40, steps_per_epoch=10, batch_size=64)
    assert [float(s(i)) for i in (0, 20, 40)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)
    # The linear scaling rule: learning_rate is for reference_batch_size images.
    cfg.reference_batch_size = 256
    s = optim.make_schedule(cfg, total_steps=40, steps_per_epoch=10, batch_size=64)
    assert [float(s(i)) for i in (0, 20)] == pytest.approx([0.25, 0.125])
