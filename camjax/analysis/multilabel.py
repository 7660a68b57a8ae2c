"""Multi-label metrics on host: COCO / VOC style and pedestrian-attribute style.

Inputs everywhere:
  scores: (N, K) per-label probabilities, or logits with from_logits=True.
  labels: (N, K) in {0, 1} (bool or int).
A label is predicted positive when its probability is >= threshold (0.5 by
default), i.e. when its logit is >= log(t / (1 - t)) (0 for t = 0.5). The
ranking metric (AP) uses the scores directly and is the same for
probabilities and logits. Every metric is a fraction in [0, 1], not percent.

COCO style (ML-GCN, Chen et al. 2019; ASL, Ridnik et al. 2021):
  mAP  mean over classes of average precision.
  CP, CR, CF1  per-class precision / recall averaged over classes,
       CF1 = 2 CP CR / (CP + CR).
  OP, OR, OF1  overall (micro) precision / recall over every label.

Pedestrian-attribute style (PETA / RAP: Li et al. 2015; PA-100K: Liu et al.
2017; conventions of the Rethinking-PAR code, Jia et al. 2021):
  mA  mean over attributes of (TPR + TNR) / 2.
  accuracy, precision, recall  means over images of |P&G| / |P|G|,
       |P&G| / |P| and |P&G| / |G|, where P and G are the image's predicted
       and true positive sets.
  F1  2 precision recall / (precision + recall) of the averaged precision and
       recall (not the mean of per-image F1).
"""

import math

import numpy as np


def _inputs(scores, labels):
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f'scores {scores.shape} and labels {labels.shape} must both be (N, K)')
    if scores.shape[0] == 0:
        raise ValueError('no examples')
    if not np.all(np.isfinite(scores)):
        raise ValueError('scores must be finite')
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError('labels must be 0 or 1')
    return scores, labels.astype(bool)


def _predicted(scores, *, threshold: float, from_logits: bool):
    if not 0.0 < threshold < 1.0:
        raise ValueError(f'threshold must be in (0, 1), got {threshold}')
    # Thresholding the logit avoids sigmoid rounding to exactly 0 or 1 for
    # large logits; log(t) - log1p(-t) is exactly 0 for t = 0.5.
    cut = math.log(threshold) - math.log1p(-threshold) if from_logits else threshold
    return scores >= cut


def _ratio(num, den):
    """num / den with 0 / 0 = 0: the value the eps-guarded divisions of the
    ML-GCN and Rethinking-PAR evaluation code give."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def average_precision(*, scores, labels) -> np.ndarray:
    """Per-class non-interpolated average precision.

    AP = (1 / |pos|) sum over positives i of precision(s_i), where
    precision(s) = #{positives with score >= s} / #{examples with score >= s}.
    This is sklearn's `average_precision_score` (no interpolation). With no
    tied scores it is the ML-GCN / ASL "precision at each true-positive rank,
    averaged"; with ties it does not depend on the order of tied examples,
    which those rank-based implementations do.

    Args:
      scores: (N, K) probabilities or logits (any monotone transform gives the
        same AP).
      labels: (N, K) in {0, 1}.
    Returns:
      (K,) float64; NaN for a class with no positive example (AP undefined).
    """
    scores, labels = _inputs(scores, labels)
    ap = np.full(scores.shape[1], np.nan)
    for k in np.flatnonzero(labels.any(axis=0)):
        order = np.argsort(-scores[:, k], kind='stable')
        neg_sorted = -scores[order, k]
        positive = labels[order, k]
        true_pos = np.cumsum(positive)
        # Precision at a score counts every example tied with it: evaluate at
        # the last position holding that score.
        last = np.searchsorted(neg_sorted, neg_sorted, side='right') - 1
        precision = true_pos[last] / (last + 1)
        ap[k] = np.sum(precision[positive]) / true_pos[-1]
    return ap


def coco_metrics(*, scores, labels, threshold: float = 0.5, from_logits: bool = False) -> dict:
    """COCO / VOC multi-label metrics: mAP, CP, CR, CF1, OP, OR, OF1.

    Class-averaged metrics (mAP, CP, CR, hence CF1) average over the classes
    with at least one positive label; AP and recall are undefined for the
    others (COCO and VOC test sets have positives for every class). A class
    with no predicted positive has precision 0 (ML-GCN's `Np[Np == 0] = 1`).
    Overall metrics pool every label of every class: OP = sum TP / sum
    predicted positives (0 if nothing is predicted), OR = sum TP / sum
    positives. An F1 whose precision and recall are both 0 is 0.

    Args:
      scores: (N, K) probabilities, or logits if from_logits.
      labels: (N, K) in {0, 1}.
      threshold: a label is predicted positive when its probability is
        >= threshold.
      from_logits: scores are logits.
    Returns:
      {'mAP', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1'} -> float.
    """
    scores, labels = _inputs(scores, labels)
    evaluated = labels.any(axis=0)
    if not evaluated.any():
        raise ValueError('no class has a positive label; AP and recall are undefined')
    predicted = _predicted(scores, threshold=threshold, from_logits=from_logits)
    true_pos = np.sum(labels & predicted, axis=0)
    num_pred = np.sum(predicted, axis=0)
    num_pos = np.sum(labels, axis=0)
    cp = float(np.mean(_ratio(true_pos, num_pred)[evaluated]))
    cr = float(np.mean(_ratio(true_pos, num_pos)[evaluated]))
    op = float(_ratio(true_pos.sum(), num_pred.sum()))
    recall = float(_ratio(true_pos.sum(), num_pos.sum()))
    ap = average_precision(scores=scores, labels=labels)
    return {'mAP': float(np.mean(ap[evaluated])),
            'CP': cp, 'CR': cr, 'CF1': float(_ratio(2 * cp * cr, cp + cr)),
            'OP': op, 'OR': recall, 'OF1': float(_ratio(2 * op * recall, op + recall))}


def pedestrian_attribute_metrics(*, scores, labels, threshold: float = 0.5,
                                 from_logits: bool = False) -> dict:
    """Pedestrian-attribute metrics: label-based mA and instance-based
    accuracy, precision, recall and F1.

    Every 0 / 0 is 0, as the eps = 1e-20 guards of Rethinking-PAR make it:
    an attribute with no positive image has TPR 0 (so its mA term is TNR / 2),
    and an image with no true and no predicted attribute scores 0 in
    accuracy, precision and recall. One deliberate difference: Rethinking-PAR
    predicts positive for probability > 0.5, this module for >= threshold;
    they differ only for a probability of exactly 0.5.

    Args:
      scores: (N, K) attribute probabilities, or logits if from_logits.
      labels: (N, K) in {0, 1}.
      threshold: an attribute is predicted present when its probability is
        >= threshold.
      from_logits: scores are logits.
    Returns:
      {'mA', 'accuracy', 'precision', 'recall', 'F1'} -> float.
    """
    scores, labels = _inputs(scores, labels)
    predicted = _predicted(scores, threshold=threshold, from_logits=from_logits)
    # Label-based (Li et al. 2015): per attribute, over images.
    tpr = _ratio(np.sum(labels & predicted, axis=0), np.sum(labels, axis=0))
    tnr = _ratio(np.sum(~labels & ~predicted, axis=0), np.sum(~labels, axis=0))
    # Instance-based: per image over attributes, then averaged over images.
    intersection = np.sum(labels & predicted, axis=1)
    accuracy = float(np.mean(_ratio(intersection, np.sum(labels | predicted, axis=1))))
    precision = float(np.mean(_ratio(intersection, np.sum(predicted, axis=1))))
    recall = float(np.mean(_ratio(intersection, np.sum(labels, axis=1))))
    return {'mA': float(np.mean((tpr + tnr) / 2)), 'accuracy': accuracy,
            'precision': precision, 'recall': recall,
            'F1': float(_ratio(2 * precision * recall, precision + recall))}
