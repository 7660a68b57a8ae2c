"""Pure loss functions: arrays in, arrays out, keyword-only arguments.

Per-example losses return a (B,) vector; `camjax.objectives` applies the
(weighted) batch mean. Nothing here knows about models or configs.
"""

import jax
import jax.numpy as jnp


def softmax_cross_entropy(*, logits, labels, label_smoothing: float = 0.0):
    """Softmax cross-entropy with optional label smoothing.

    Args:
      logits: (B, K) unnormalized scores.
      labels: (B,) int class indices.
      label_smoothing: eps in [0, 1); the target is (1 - eps) one_hot + eps / K
        (Szegedy et al. 2016, Sec. 7).
    Returns:
      (B,) per-example loss. With eps = 0 its gradient w.r.t. the logits is
      `softmax(logits) - one_hot(labels)`, so for a linear model z = x W + b
      the weight gradient is the textbook `-(y - y_hat) x`.
    """
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def binary_logistic_loss(*, logits, labels):
    """Logistic regression loss -[y log s(z) + (1 - y) log(1 - s(z))].

    Args:
      logits: (B,) scores z.
      labels: (B,) targets y in {0, 1}.
    Returns:
      (B,) per-example loss, computed stably from log-sigmoids; its gradient
      w.r.t. z is `sigmoid(z) - y`.
    """
    labels = labels.astype(logits.dtype)
    return -(labels * jax.nn.log_sigmoid(logits) + (1 - labels) * jax.nn.log_sigmoid(-logits))


def l2_penalty(*, params, lam: float):
    """`lam / 2 * sum ||w||^2` over every leaf; its gradient adds `lam * w`."""
    return 0.5 * lam * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))
