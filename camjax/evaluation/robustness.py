"""Adversarial robustness: accuracy under the fast gradient sign method (FGSM).

FGSM (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial
Examples", Eq. 3) moves every pixel by eps in the direction that raises the
loss:

    x_adv = clip(x + eps * sign(grad_x CE(f(normalize(x)), y)), 0, 1)

The HNC paper (Sec. 4.4) reports top-1 accuracy on such images for several eps.
Here x is the image in [0, 1] *before* mean/std normalization, so eps is in
pixel units (eps = 8/255 is eight grey levels) whatever the dataset's mean and
std; normalization happens inside, on device. The model runs in eval mode
(running BatchNorm statistics), so each example's gradient depends on that
example alone and padding cannot leak into real examples.

Single-label only: the attack raises the softmax cross-entropy of the one true
class, which has no multi-label counterpart here.
"""

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from camjax import losses, parallel
from camjax.data.transforms import pixels01, standardize
from camjax.evaluation import metrics as metrics_lib


def _logits(model, variables, x, *, mean, std):
    logits, _ = model.apply(variables, standardize(x, mean=mean, std=std), train=False)
    return logits


def _check_single_label(labels) -> None:
    if labels.ndim != 1:
        raise ValueError(f'FGSM needs single-label (B,) labels, got shape {labels.shape}')


def input_gradient_sign(*, model, variables, images, labels, mean, std):
    """sign(grad_x CE) at the clean images: the FGSM direction.

    Args:
      images: (B, H, W, 3) float in [0, 1].
      labels: (B,) int class indices.
    Returns:
      (B, H, W, 3) in {-1, 0, 1}. The loss is the batch *sum* of per-example
      CE: in eval mode example i's gradient is that of its own loss, unscaled
      by 1/B (a mean would push more entries of a large batch to an
      underflowing 0).
    """
    _check_single_label(labels)

    def loss(x):
        logits = _logits(model, variables, x, mean=mean, std=std)
        return jnp.sum(losses.softmax_cross_entropy(logits=logits, labels=labels))

    return jnp.sign(jax.grad(loss)(images.astype(jnp.float32)))


def fgsm_images(*, model, variables, images, labels, eps: float, mean, std):
    """Goodfellow et al. 2015, Eq. 3: untargeted FGSM images.

    Args:
      model: a camjax model (`apply(variables, x, train=False) -> (logits, _)`).
      variables: {'params': ..., 'batch_stats': ...} (batch_stats may be {}).
      images: (B, H, W, 3) float in [0, 1], before normalization.
      labels: (B,) int true classes (the loss the attack raises).
      eps: L-inf step in pixel units, eps >= 0.
      mean, std: per-channel normalization applied inside, as in training.
    Returns:
      (B, H, W, 3) float32 adversarial images in [0, 1]: every pixel moves by
      exactly eps unless clipping stops it or its gradient is exactly 0.
    """
    x = images.astype(jnp.float32)
    direction = input_gradient_sign(model=model, variables=variables, images=x,
                                    labels=labels, mean=mean, std=std)
    return jnp.clip(x + eps * direction, 0.0, 1.0)


def _as_variables(state_or_variables) -> dict:
    """A TrainState (or anything with .params / .batch_stats) or a variables dict."""
    if hasattr(state_or_variables, 'params'):
        return {'params': state_or_variables.params,
                'batch_stats': state_or_variables.batch_stats}
    return {'batch_stats': {}, **state_or_variables}


def _check_eps(eps_values) -> tuple[float, ...]:
    eps_values = tuple(float(e) for e in eps_values)
    if not eps_values:
        raise ValueError('eps_values is empty')
    if any(e < 0 or e > 1 for e in eps_values):
        raise ValueError(f'eps must lie in [0, 1] (pixel units), got {eps_values}')
    if len(set(eps_values)) != len(eps_values):
        raise ValueError(f'eps_values has duplicates: {eps_values}')
    return eps_values


def fgsm_sums(*, model, variables, batch: dict, eps_values: Sequence[float], mean, std) -> dict:
    """Unjitted body of the FGSM eval step (also the reference in tests).

    Args:
      batch: {'image': uint8 (B,H,W,3), 'label': (B,) int, 'mask': (B,) float
        1 for real examples and 0 for padding}.
      eps_values: the eps to evaluate, each in [0, 1].
    Returns:
      {'count': sum of mask, 'correct': {eps: masked count of top-1 correct
      predictions on the eps-images}}. One backward pass serves every eps: the
      FGSM direction does not depend on eps.
    """
    eps_values = _check_eps(eps_values)
    labels, weights = batch['label'], batch['mask']
    _check_single_label(labels)
    x = pixels01(batch['image'])
    direction = input_gradient_sign(model=model, variables=variables, images=x, labels=labels,
                                    mean=mean, std=std)
    b, num_eps = x.shape[0], len(eps_values)
    eps = jnp.asarray(eps_values, jnp.float32)[None, :, None, None, None]
    adversarial = jnp.clip(x[:, None] + eps * direction[:, None], 0.0, 1.0)  # (B, E, H, W, 3)
    # One forward pass over B * E images, example-major: the merged axis stays
    # sharded like B. (vmap over eps, or an eps-major merge, makes the SPMD
    # partitioner all-gather the batch before every conv.)
    logits = _logits(model, variables, adversarial.reshape(b * num_eps, *x.shape[1:]),
                     mean=mean, std=std)
    # The same top-1 rule (ties count as correct) as make_eval_step, so the
    # eps = 0 accuracy is the clean accuracy the training logs report.
    correct = metrics_lib.topk_correct(logits=logits, labels=jnp.repeat(labels, num_eps), k=1)
    counts = jnp.sum(correct.reshape(b, num_eps) * weights[:, None], axis=0)
    return {'count': jnp.sum(weights),
            'correct': {e: counts[i] for i, e in enumerate(eps_values)}}


def make_fgsm_eval_step(model, *, eps_values: Sequence[float], mean, std, mesh,
                        num_classes: int):
    """Jitted `(state_or_variables, batch) -> sums` on the ('data',) mesh.

    The state (a TrainState or a {'params', 'batch_stats'} dict) is
    replicated and the eval batch (see `camjax.data.eval_batches`) sharded on
    its batch axis, as in `camjax.evaluation.classification.make_eval_step`. `sums` is
    `fgsm_sums(...)`: summed over batches, correct / count is the accuracy.
    Single-label data only. `num_classes` is only checked against the model.
    """
    eps_values = _check_eps(eps_values)
    if getattr(model, 'num_classes', num_classes) != num_classes:
        raise ValueError(f'model has {model.num_classes} classes, expected {num_classes}')

    def step(state_or_variables, batch: dict):
        return fgsm_sums(model=model, variables=_as_variables(state_or_variables), batch=batch,
                         eps_values=eps_values, mean=mean, std=std)

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(replicated, sharded), out_shardings=replicated)


def fgsm_accuracy(step, state, batches: Iterable[dict]) -> dict[float, float]:
    """Run `step` over `batches` (float64 sums on host) -> {eps: accuracy}."""
    count, correct = 0.0, None
    for batch in batches:
        sums = jax.device_get(step(state, batch))
        count += float(sums['count'])
        values = {e: np.float64(v) for e, v in sums['correct'].items()}
        correct = values if correct is None else {e: correct[e] + v for e, v in values.items()}
    if correct is None or count == 0:
        raise ValueError('no examples with mask 1 in batches')
    return {e: float(v / count) for e, v in sorted(correct.items())}
