"""The periodic evaluation of the training and refine loops: a jitted step
summing classification metrics, the objective's loss terms and the
negative-CAM peakiness over the real (mask 1) examples of sharded, padded
eval batches, and their exact host-side summary."""

import jax
import jax.numpy as jnp
import numpy as np

from camjax import objectives, parallel
from camjax.data import normalize_images
from camjax.evaluation import metrics as metrics_lib
from camjax.training.state import forward


def make_eval_step(model, objective, *, num_classes: int, mean, std, mesh,
                   negative_cam_k: int = 0, pos_rate=None):
    """Jitted `(state, batch) -> sums` over the examples with mask 1. With
    `negative_cam_k`, also the peakiness of the top-k negative CAMs."""
    negative_cam_k = min(negative_cam_k, num_classes - 1)

    def eval_step(state, batch: dict):
        images = normalize_images(batch['image'], mean=mean, std=std)
        logits, features, _ = forward(model, state.params, state.batch_stats, images,
                                       train=False)
        weights = batch['mask']
        inputs = objectives.objective_inputs(logits, features, batch['label'], state.params,
                                             pos_rate)
        loss, terms = objective(inputs, weights)
        sums = metrics_lib.classification_sums(logits=logits, labels=batch['label'],
                                               weights=weights, num_classes=num_classes)
        count = sums['count']
        sums['loss'] = loss * count
        sums.update({f'loss/{name}': value * count for name, value in terms.items()})
        if negative_cam_k:
            peakiness = objectives.negative_cam_peakiness(inputs, negative_cam_k)
            sums['neg_cam_peak_minus_mean'] = jnp.sum(peakiness * weights)
        return sums

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(eval_step, in_shardings=(replicated, sharded), out_shardings=replicated)


def evaluate(eval_step, state, batches) -> dict:
    """Run `eval_step` over `batches` and summarize (float64 sums on host)."""
    total = None
    for batch in batches:
        sums = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(
            eval_step(state, batch)))
        total = sums if total is None else jax.tree.map(np.add, total, sums)
    return metrics_lib.summarize(total)
