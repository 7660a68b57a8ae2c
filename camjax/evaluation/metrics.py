"""Classification metrics as per-batch sums (on device) and their summary
(on host). Sums make exact averages over padded, sharded eval batches."""

import jax
import jax.numpy as jnp
import numpy as np


def topk_correct(*, logits, labels, k: int):
    """(B,) float: 1 where `labels` is among the k highest `logits` (B,K).

    The one accuracy definition of camjax. Classes are ranked as a stable sort
    by descending logit ranks them, so a tie goes to the lower class index,
    as `np.argmax` does: with all-equal logits only label 0 is top-1 correct.
    An example with any non-finite logit (a diverged model) is never correct.
    """
    k = min(k, logits.shape[-1])
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    index = jnp.arange(logits.shape[-1])
    ahead = (logits > label_logit) | ((logits == label_logit) & (index < labels[:, None]))
    rank = jnp.sum(ahead, axis=-1)
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    return ((rank < k) & finite).astype(jnp.float32)


def predicted_class(logits) -> np.ndarray:
    """(B,) int: the top-1 class of `topk_correct` (argmax, ties to the lower
    index), or -1, which matches no label, for an example with a non-finite
    logit. Host-side, for paired comparisons of predictions."""
    logits = np.asarray(logits)
    return np.where(np.all(np.isfinite(logits), axis=-1), np.argmax(logits, axis=-1), -1)


def label_correct(*, logits, labels):
    """Multi-label: (B,K) float, 1 where sigmoid(logit) > 0.5 agrees with the label."""
    return ((logits > 0) == (labels > 0)).astype(jnp.float32)


def example_accuracy(*, logits, labels):
    """(B,) top-1 correctness, or for multi-label (B,K) labels the fraction of
    labels predicted right."""
    if labels.ndim == 2:
        return jnp.mean(label_correct(logits=logits, labels=labels), axis=-1)
    return topk_correct(logits=logits, labels=labels, k=1)


def classification_sums(*, logits, labels, weights, num_classes: int) -> dict:
    """Per-batch sums: count, top1, top5, and per-class correct / count (K,).
    For multi-label data 'top1' sums label accuracy, the per-class entries are
    per-class label accuracy, and there is no top5."""
    if labels.ndim == 2:
        correct = label_correct(logits=logits, labels=labels) * weights[:, None]
        return {'count': jnp.sum(weights), 'top1': jnp.sum(jnp.mean(correct, axis=-1)),
                'class_correct': jnp.sum(correct, axis=0),
                'class_count': jnp.broadcast_to(jnp.sum(weights), (num_classes,))}
    top1 = topk_correct(logits=logits, labels=labels, k=1) * weights
    onehot = jax.nn.one_hot(labels, num_classes) * weights[:, None]
    return {'count': jnp.sum(weights), 'top1': jnp.sum(top1),
            'top5': jnp.sum(topk_correct(logits=logits, labels=labels, k=5) * weights),
            'class_correct': top1 @ onehot, 'class_count': jnp.sum(onehot, axis=0)}


COUNT_KEYS = ('count', 'top1', 'top5', 'class_correct', 'class_count')


def summarize(sums: dict) -> dict:
    """Host-side summary of accumulated sums. Every scalar key besides the
    counts is a sum over examples and becomes a mean; per-class accuracy is
    None for a class with no examples."""
    count = float(sums['count'])
    out = {'count': int(count), 'accuracy': float(sums['top1']) / count}
    if 'top5' in sums:
        out['top5_accuracy'] = float(sums['top5']) / count
    for key, value in sums.items():
        if key not in COUNT_KEYS:
            out[key] = float(value) / count
    class_count = np.asarray(sums['class_count'], np.float64)
    with np.errstate(invalid='ignore', divide='ignore'):
        per_class = np.asarray(sums['class_correct'], np.float64) / class_count
    out['per_class_accuracy'] = [None if np.isnan(a) else float(a) for a in per_class]
    return out
