"""Mixup (Zhang et al., 2018, "mixup: Beyond Empirical Risk Minimization",
Eq. 1): train on x~ = lam x_i + (1 - lam) x_j with the target
y~ = lam y_i + (1 - lam) y_j, lam ~ Beta(alpha, alpha), j = a random
permutation of the batch, one lam per batch as in the paper's code.

The randomness is a function of (config.seed, step) only, so a resumed run
mixes exactly as an uninterrupted one, on any number of devices or hosts.

lam is folded to max(lam, 1 - lam). Beta(alpha, alpha) is symmetric and j is
a uniformly random permutation, so the mixed batch has the same distribution
(the pair (i, j) with weight 1 - lam is the pair (j, i) of the inverse
permutation with weight lam), and alpha -> 0 gives lam = 1: the batch
unchanged, exactly. The targets are not mixed here: every classification term
is linear in its target, so `camjax.objectives` takes lam x term(y_i) +
(1 - lam) x term(y_j), which is the term of the mixed target y~.
"""

import jax
import jax.numpy as jnp

STREAM = 0x6D6978  # 'mix': keeps mixup's keys apart from other uses of the seed


def mix(images, labels, *, alpha: float, seed: int, step):
    """(B, ...) float images and their labels -> (mixed images, the partner
    labels y_j, lam as a (B,) vector) for training step `step` (0-based).
    The train step mixes raw pixel values: normalization is affine, so that
    equals mixing the normalized images."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STREAM), step)
    lam_key, perm_key = jax.random.split(key)
    lam = jax.random.beta(lam_key, alpha, alpha)
    lam = jnp.maximum(lam, 1.0 - lam)
    partner = jax.random.permutation(perm_key, images.shape[0])
    mixed = lam * images + (1.0 - lam) * images[partner]
    return mixed, labels[partner], jnp.full(images.shape[:1], lam, jnp.float32)
