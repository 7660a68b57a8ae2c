"""Prediction collapse during LinR (issue 22): measures of how diverse a
batch's predictions are, and the guard that ends a LinR phase which has
collapsed.

Why: `f(a x + b y) = a f(x) + b f(y)` holds exactly for a network whose
output does not depend on its input, so the LinR loss alone can be driven to
0 by a constant predictor. These measures show that happening, step by step,
on the clean images of each LinR batch:

- `top_class_share`: the share of the batch predicted (argmax) as its most
  common class. A class-balanced batch of 128 CIFAR-10 images gives about
  0.15-0.2 for a good classifier; a constant predictor gives 1.
- `mean_prediction_entropy`: the entropy (nats) of the batch-mean prediction,
  log K for a batch whose predictions spread over the K classes evenly, 0 for
  one that puts all its mass on one class.
- `mean_max_prob`: the mean over the batch of each prediction's largest
  probability (confidence); 1/K for uniform predictions.

The guard ends the phase when `top_class_share >= refine.collapse_share` on
every one of `refine.collapse_window` consecutive steps. The streak is kept
on device (no host sync per step) and read every `collapse_window` steps.
The measures are defined for one label per image; for multi-label data they
are not computed and the guard is off.
"""

import jax
import jax.numpy as jnp

PREFIX = 'collapse/'
MEASURES = ('top_class_share', 'mean_prediction_entropy', 'mean_max_prob')


def measures(*, logits) -> dict:
    """{PREFIX + measure: scalar} for (B, K) logits of one batch."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    num_classes = probs.shape[-1]
    counts = jnp.sum(jax.nn.one_hot(jnp.argmax(probs, -1), num_classes), axis=0)
    mean = jnp.mean(probs, axis=0)
    return {PREFIX + 'top_class_share': jnp.max(counts) / probs.shape[0],
            PREFIX + 'mean_prediction_entropy': jnp.sum(mean * -jnp.log(jnp.maximum(mean, 1e-30))),
            PREFIX + 'mean_max_prob': jnp.mean(jnp.max(probs, axis=-1))}


@jax.jit
def extend_streak(streak, step_metrics, threshold):
    """Consecutive collapsed steps, this one included (0 if it is not)."""
    collapsed = step_metrics[PREFIX + 'top_class_share'] >= threshold
    return jnp.where(collapsed, streak + 1, 0)


def describe(step_metrics: dict) -> dict:
    """The step's measures as host floats, without the prefix."""
    return {m: float(step_metrics[PREFIX + m]) for m in MEASURES}


def format_means(means: dict) -> str:
    """The progress line's part for a window's mean measures ('' if none)."""
    if PREFIX + 'top_class_share' not in means:
        return ''
    return (f' | top-class share {means[PREFIX + "top_class_share"]:.3f}, mean-prediction '
            f'entropy {means[PREFIX + "mean_prediction_entropy"]:.3f}, max-prob '
            f'{means[PREFIX + "mean_max_prob"]:.3f}')
