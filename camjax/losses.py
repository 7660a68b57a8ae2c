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


# =============================================================================
# Homogeneous Negative CAM (HNC): Sun et al., "Fixing Localization Errors to
# Improve Image Classification" ("HNC paper").
# =============================================================================
def top_negative_classes(*, logits, positives, k: int):
    """The k highest-scoring negative classes of each example.

    Args:
      logits: (B, K) scores used for ranking.
      positives: (B, K) bool; True for the ground-truth class (single-label) or
        every positive class (multi-label). Positives are never selected.
      k: number of negatives to select, k <= K - 1.
    Returns:
      classes: (B, k) int32 indices, highest logit first.
      valid: (B, k) bool; False for slots beyond an example's number of
        negatives (possible only in multi-label data). Those slots hold
        arbitrary indices and must be masked out of the loss.
    The selection is under stop_gradient: it picks which maps are regularized,
    it is not itself differentiated.
    """
    logits = jax.lax.stop_gradient(logits)
    masked = jnp.where(positives, -jnp.inf, logits)
    _, classes = jax.lax.top_k(masked, k)
    num_negatives = logits.shape[-1] - jnp.sum(positives, axis=-1, keepdims=True)
    valid = jnp.arange(k)[None, :] < num_negatives
    return classes.astype(jnp.int32), valid


def class_activation_maps(*, features, kernel, classes, bias=None, positive_only=False):
    """CAMs M_o = features @ W[:, o] (+ b[o]) for the selected classes only:
    the one CAM function of camjax (losses, evaluation, CAM grids).

    Args:
      features: (B, H, W, C) last feature maps.
      kernel: (C, K) CAM classifier weights W.
      classes: (B, k) int class indices per example.
      bias: (K,) classifier bias, added when given (the released HNC code adds
        it to every map; localization uses CAMs without it).
      positive_only: CAMs from max(W, 0), negative weights clamped:
        "localization from positive weights only" (the seed paper's switch).
        Classification is unaffected; only these maps change.
    Returns:
      (B, k, H, W). The columns of W are gathered first, so only k maps per
      example are computed (never all K). With the bias, mean_hw(M_o) is
      exactly logit o.
    """
    if positive_only:
        kernel = jnp.maximum(kernel, 0.0)
    weights = jnp.take(kernel, classes, axis=1)                 # (C, B, k)
    cams = jnp.einsum('bhwc,cbk->bkhw', features.astype(kernel.dtype), weights)
    return cams if bias is None else cams + jnp.take(bias, classes)[:, :, None, None]


def _valid_or_all(cams, valid):
    return jnp.ones(cams.shape[:2], bool) if valid is None else valid


def hnc_mse(*, cams, alpha: float = 0.0, valid=None):
    """HNC paper, Eq. 2: the mean squared deviation of negative CAMs from alpha.

    Args:
      cams: (B, k, H, W) CAMs of the top-k negative classes.
      alpha: target value of a homogeneous map (default 0).
      valid: (B, k) bool, real negative slots; None means all.
    Returns:
      Scalar: mean over valid (example, slot) pairs and over H and W -- the
      released code's reduction. Its gradient w.r.t. one pixel is
      2 (M - alpha) / (n_valid * H * W) (Eq. 11 with beta = 1/HW).
    """
    valid = _valid_or_all(cams, valid)
    per_slot = jnp.mean(jnp.square(cams - alpha), axis=(2, 3))  # (B, k)
    return jnp.sum(per_slot * valid) / jnp.maximum(jnp.sum(valid), 1)


def hnc_kd_per_example(*, cams, valid=None):
    """HNC paper, Eq. 5 per example: sum over valid negatives o of
    -mean_hw log softmax_hw(M_o). Returns (B,)."""
    valid = _valid_or_all(cams, valid)
    b, k = cams.shape[:2]
    log_p = jax.nn.log_softmax(cams.reshape(b, k, -1), axis=-1)  # stable for large M
    return jnp.sum(-jnp.mean(log_p, axis=-1) * valid, axis=-1)


def hnc_kd(*, cams, valid=None):
    """HNC paper, Eq. 5: distillation of each negative CAM towards a uniform map.

    Args:
      cams: (B, k, H, W) CAMs of the top-k negative classes.
      valid: (B, k) bool, real negative slots; None means all.
    Returns:
      Scalar: sum over valid negatives of -mean_hw log softmax_hw(M_o),
      averaged over the batch. Gradient w.r.t. a pixel of M_o, per example:
      softmax_hw(M_o) - 1/HW (Eq. 12). By Proposition 1 each slot's value is
      >= max M_o - mean M_o, so minimizing it flattens the map's peak.
    """
    return jnp.mean(hnc_kd_per_example(cams=cams, valid=valid))


# =============================================================================
# Penalties on the CAM classifier weights w_{c,k} (not the whole network).
# =============================================================================
PENALTY_FORMS = ('l1', 'l2', 'sign_split')
SPLIT_NORMS = ('l1', 'l2')


def _norm(x, kind):
    # x * sign(x) is |x| with subgradient 0 at 0 (jnp.abs has 1), so L1 keeps
    # exact zeros at zero -- what a sparsity study expects.
    return jnp.sum(x * jnp.sign(x)) if kind == 'l1' else 0.5 * jnp.sum(jnp.square(x))


def classifier_weight_penalty(*, kernel, form: str, lam: float = 0.0, lam_pos: float = 0.0,
                              lam_neg: float = 0.0, split_norm: str = 'l1'):
    """Penalty on the CAM classifier W (C, K) only.

    form='l1': lam * sum |w|.   form='l2': lam / 2 * sum w^2.
    form='sign_split': lam_pos * N(max(w, 0)) + lam_neg * N(max(-w, 0)) with
      N = sum |.| (split_norm='l1') or 1/2 sum (.)^2 ('l2'): positive and
      negative weights are penalized separately, to study how each sign shapes
      the CAM.
    Returns a scalar. The optimizer's network-wide weight decay is separate.
    """
    if form == 'l1':
        return lam * _norm(kernel, 'l1')
    if form == 'l2':
        return lam * _norm(kernel, 'l2')
    if form == 'sign_split':
        positive = jnp.where(kernel > 0, kernel, 0.0)
        negative = jnp.where(kernel < 0, -kernel, 0.0)
        return lam_pos * _norm(positive, split_norm) + lam_neg * _norm(negative, split_norm)
    raise ValueError(f'form must be one of {PENALTY_FORMS}, got {form!r}')


# =============================================================================
# Multi-label classification.
# =============================================================================
def weighted_sigmoid_ce_per_example(*, logits, labels, pos_rate):
    """HNC paper, Eq. 8 per example: -(1/n) sum_o u_o [y_o log s(z_o) +
    (1 - y_o) log(1 - s(z_o))], n = K classes (Sec. 3.1), u_o = exp(1 - p_o)
    if y_o = 1 else exp(p_o). Returns (B,)."""
    labels = labels.astype(logits.dtype)
    weights = jnp.where(labels > 0, jnp.exp(1.0 - pos_rate), jnp.exp(pos_rate))
    per_class = -(labels * jax.nn.log_sigmoid(logits)
                  + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
    return jnp.mean(weights * per_class, axis=-1)  # the 1/n of Eq. 8


def weighted_sigmoid_ce(*, logits, labels, pos_rate):
    """HNC paper, Eq. 8: weighted sigmoid cross-entropy for multi-label data.

    Args:
      logits: (B, K) scores.
      labels: (B, K) targets in {0, 1}.
      pos_rate: (K,) positive rate p_o of each class on the training split.
    Returns:
      Scalar: Eq. 8's mean over the K classes, averaged over the batch. Rare
      classes get larger weight on their positives (exp(1 - p_o)) and smaller
      on their negatives (exp(p_o)).
    """
    return jnp.mean(weighted_sigmoid_ce_per_example(logits=logits, labels=labels,
                                                    pos_rate=pos_rate))


# =============================================================================
# Linear Regularization (LinR): "Linear Regularization: An easy approach to
# refine your model" ("LinR paper"). P1 = f(a x + b y) is the prediction on the
# mixed input, P2 = a f(x) + b f(y) the mix of the predictions; LinR pulls P1
# towards P2. The callers (camjax.training.refine) build P1 and P2, as
# log-probabilities; these functions only measure their distance.
# =============================================================================
LINR_DISTANCES = ('kl', 'mse')
LINR_DIRECTIONS = ('p1_p2', 'p2_p1')
LINR_REDUCTIONS = ('sum', 'mean')
LOG_FLOOR = 1e-12  # log(max(p, floor)) where probabilities are clipped before their log


def linr_divergence(*, log_p1, log_p2, dis: str = 'kl', direction: str = 'p1_p2',
                    reduction: str = 'sum', where=None):
    """LinR paper, Eq. 7 (Eq. 9 with `where`): Dis(P1, P2) per example.

    Args:
      log_p1, log_p2: log-probabilities, (B, K) of a distribution over K
        classes, or (B, K, 2) holding [log p, log(1 - p)] of K Bernoulli
        attributes (multi-label data: the Bernoulli KL per attribute).
      dis: 'kl' (Eq. 7) or 'mse' (Table 6: squared differences of the
        probabilities, of p alone for attributes).
      direction: 'p1_p2' is D_KL(P1 || P2) = sum P1 (log P1 - log P2);
        'p2_p1' is D_KL(P2 || P1), P2 as a soft pseudo-label for P1, which is
        what PyTorch's `kl_div(log P1, P2)` computes.
      reduction: over the K classes (attributes). Eq. 7 leaves it to the
        definition of KL, a 'sum'; 'mean' divides by K, as PyTorch's
        `kl_div(..., reduction='mean')` (its default) does over the
        B x K elements, relative to the per-example sum.
      where: (B, K) bool or None; only True entries enter (LinRC, Eq. 9,
        with `linr_confidence_mask`). 'mean' still divides by K.
    Returns:
      (B,). The entries are the literal ones, with no renormalization: for
      LinRNM (Eq. 10) P2 = a f(x) sums to a, and D_KL(f(ax) || a f(x)) =
      D_KL(f(ax) || f(x)) - log a, a constant offset with no gradient.
      Dis(P, P) = 0, and the KL forms are >= 0 for distributions.
    """
    if dis not in LINR_DISTANCES:
        raise ValueError(f'dis must be one of {LINR_DISTANCES}, got {dis!r}')
    if direction not in LINR_DIRECTIONS:
        raise ValueError(f'direction must be one of {LINR_DIRECTIONS}, got {direction!r}')
    if reduction not in LINR_REDUCTIONS:
        raise ValueError(f'reduction must be one of {LINR_REDUCTIONS}, got {reduction!r}')
    bernoulli = log_p1.ndim == 3
    if dis == 'mse':
        per_entry = jnp.square(jnp.exp(log_p1) - jnp.exp(log_p2))
        per_entry = per_entry[..., 0] if bernoulli else per_entry
    else:
        log_p, log_q = (log_p1, log_p2) if direction == 'p1_p2' else (log_p2, log_p1)
        per_entry = jnp.exp(log_p) * (log_p - log_q)  # 0 where p underflows: 0 log 0 = 0
        per_entry = jnp.sum(per_entry, axis=-1) if bernoulli else per_entry
    if where is not None:
        per_entry = jnp.where(where, per_entry, 0.0)
    total = jnp.sum(per_entry, axis=-1)
    return total / per_entry.shape[-1] if reduction == 'mean' else total


def linr_confidence_mask(*, log_p2):
    """LinR paper, Eq. 9 (LinRC): (B, K) bool, True where P2 > 1/K -- the
    classes the mixed prediction is confident about; only they are scored.
    `log_p2` as in `linr_divergence` (for attributes, P2 is p)."""
    log_p = log_p2[..., 0] if log_p2.ndim == 3 else log_p2
    return jnp.exp(log_p) > 1.0 / log_p.shape[-1]
