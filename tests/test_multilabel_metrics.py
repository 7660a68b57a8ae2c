"""Multi-label metrics: COCO style (mAP, CP/CR/CF1, OP/OR/OF1) and
pedestrian-attribute style (mA, instance accuracy/precision/recall/F1) on a
4-image, 3-class example worked by hand, AP against brute-force references,
and the documented threshold and 0 / 0 conventions."""

import numpy as np
import pytest

from camjax.analysis.multilabel import (
    average_precision,
    coco_metrics,
    pedestrian_attribute_metrics,
)

# N = 4 images, K = 3 classes. Predicted positive where prob >= 0.5:
#            probs            labels     predicted
#   img0  [.9, .2, .6]       [1, 0, 1]   [1, 0, 1]
#   img1  [.8, .7, .1]       [1, 0, 0]   [1, 1, 0]
#   img2  [.3, .6, .4]       [0, 1, 1]   [0, 1, 0]
#   img3  [.1, .4, .3]       [0, 1, 0]   [0, 0, 0]
PROBS = np.array([[0.9, 0.2, 0.6],
                  [0.8, 0.7, 0.1],
                  [0.3, 0.6, 0.4],
                  [0.1, 0.4, 0.3]])
LABELS = np.array([[1, 0, 1],
                   [1, 0, 0],
                   [0, 1, 1],
                   [0, 1, 0]])


def test_average_precision_by_hand():
    # class 0: both positives ranked first -> 1.
    # class 1: ranking img1 (neg) .7, img2 (pos) .6, img3 (pos) .4, img0 (neg) .2:
    #   precision 1/2 at rank 2 and 2/3 at rank 3 -> (1/2 + 2/3) / 2 = 7/12.
    # class 2: img0 .6 (pos), img2 .4 (pos) first -> 1.
    np.testing.assert_allclose(average_precision(scores=PROBS, labels=LABELS),
                               [1.0, 7 / 12, 1.0], rtol=1e-12)


def test_coco_metrics_by_hand():
    # Per class        TP  FP  FN   precision  recall
    #   class 0         2   0   0       1         1
    #   class 1         1   1   1      1/2       1/2      (TP img2, FP img1, FN img3)
    #   class 2         1   0   1       1        1/2      (TP img0, FN img2)
    # CP = (1 + 1/2 + 1) / 3 = 5/6, CR = (1 + 1/2 + 1/2) / 3 = 2/3,
    # CF1 = 2 (5/6)(2/3) / (5/6 + 2/3) = 20/27.
    # OP = 4 TP / 5 predicted = 4/5, OR = 4 TP / 6 positives = 2/3,
    # OF1 = 2 (4/5)(2/3) / (4/5 + 2/3) = 8/11.
    # mAP = (1 + 7/12 + 1) / 3 = 31/36.
    expected = {'mAP': 31 / 36, 'CP': 5 / 6, 'CR': 2 / 3, 'CF1': 20 / 27,
                'OP': 4 / 5, 'OR': 2 / 3, 'OF1': 8 / 11}
    got = coco_metrics(scores=PROBS, labels=LABELS)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
        assert type(got[key]) is float


def test_pedestrian_attribute_metrics_by_hand():
    # mA per attribute (TPR + TNR) / 2:
    #   attr 0: TPR 2/2, TNR 2/2 -> 1;  attr 1: TPR 1/2, TNR 1/2 -> 1/2;
    #   attr 2: TPR 1/2, TNR 2/2 -> 3/4.   mA = (1 + 1/2 + 3/4) / 3 = 3/4.
    # Per image with G = true set, P = predicted set:
    #   img0 G={0,2} P={0,2}: |G&P| 2, |G|P| 2 -> acc 1,   prec 1,   rec 1
    #   img1 G={0}   P={0,1}: |G&P| 1, |G|P| 2 -> acc 1/2, prec 1/2, rec 1
    #   img2 G={1,2} P={1}:   |G&P| 1, |G|P| 2 -> acc 1/2, prec 1,   rec 1/2
    #   img3 G={1}   P={}:    |G&P| 0, |G|P| 1 -> acc 0,   prec 0/0 = 0, rec 0
    # accuracy 2/4, precision 2.5/4, recall 2.5/4, F1 of the means = 0.625
    # (the mean of per-image F1 would be (1 + 2/3 + 2/3 + 0) / 4 = 7/12).
    expected = {'mA': 0.75, 'accuracy': 0.5, 'precision': 0.625, 'recall': 0.625, 'F1': 0.625}
    got = pedestrian_attribute_metrics(scores=PROBS, labels=LABELS)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_logits_and_threshold_convention():
    logits = np.log(PROBS) - np.log1p(-PROBS)
    for fn in (coco_metrics, pedestrian_attribute_metrics):
        want = fn(scores=PROBS, labels=LABELS)
        got = fn(scores=logits, labels=LABELS, from_logits=True)
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-12), key
    # A probability of exactly 0.5 (logit 0) is a positive prediction.
    labels = np.array([[1], [0]])
    for scores, from_logits in (([[0.5], [0.2]], False), ([[0.0], [-1.0]], True)):
        got = coco_metrics(scores=scores, labels=labels, from_logits=from_logits)
        assert got['CP'] == got['CR'] == 1.0
    # At threshold 0.85 only img0 class 0 (.9) is predicted: OP = 1/1, OR = 1/6.
    got = coco_metrics(scores=PROBS, labels=LABELS, threshold=0.85)
    assert (got['OP'], got['OR']) == (1.0, pytest.approx(1 / 6))
    assert got['mAP'] == pytest.approx(31 / 36)  # ranking does not depend on the threshold


def _brute_force_ap(scores, labels):
    """AP from its definition: mean over positives of precision at that
    positive's score, counting every example with a score at least as high."""
    out = []
    for k in range(scores.shape[1]):
        s, y = scores[:, k], labels[:, k].astype(bool)
        if not y.any():
            out.append(np.nan)
            continue
        precisions = [np.sum(y & (s >= s[i])) / np.sum(s >= s[i]) for i in np.flatnonzero(y)]
        out.append(np.mean(precisions))
    return np.array(out)


def _rank_ap(scores, labels):
    """The ML-GCN / ASL formula: precision at each true-positive rank of a
    descending sort, averaged. Order-dependent under ties."""
    out = []
    for k in range(scores.shape[1]):
        y = labels[np.argsort(-scores[:, k]), k]
        if not y.any():
            out.append(np.nan)
            continue
        hits = np.cumsum(y)
        out.append(np.sum((hits / np.arange(1, len(y) + 1))[y == 1]) / y.sum())
    return np.array(out)


def test_average_precision_against_brute_force():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 7)) < 0.3).astype(int)
    labels[:, 3] = 0  # no positives: AP undefined
    labels[:, 5] = 1  # all positives: AP = 1
    # Rounded scores have many ties: the definition counts tied examples together.
    scores = np.round(rng.random((60, 7)), 1)
    ap = average_precision(scores=scores, labels=labels)
    np.testing.assert_allclose(ap, _brute_force_ap(scores, labels), rtol=1e-12)
    assert np.isnan(ap[3]) and ap[5] == 1.0
    # Without ties it is the rank formula of the ML-GCN / ASL evaluation code.
    scores = rng.normal(size=(60, 7))
    keep = [0, 1, 2, 4, 6]
    np.testing.assert_allclose(average_precision(scores=scores, labels=labels)[keep],
                               _rank_ap(scores, labels)[keep], rtol=1e-12)
    # Class 3 has no positives: left out of mAP, CP and CR.
    got = coco_metrics(scores=scores, labels=labels)
    assert got['mAP'] == pytest.approx(np.nanmean(_brute_force_ap(scores, labels)))


def test_classes_without_positives_and_empty_sets():
    # class 1 has no positives; its one false positive (img1) still counts in OP.
    #   class 0: TP 1 (img0), FN 1 (img1) -> P 1, R 1/2
    #   class 1: FP 1 (img1)              -> excluded from CP / CR / mAP
    # CP = 1, CR = 1/2, OP = 1 / 2 predicted = 1/2, OR = 1/2.
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    labels = np.array([[1, 0], [1, 0]])
    got = coco_metrics(scores=scores, labels=labels)
    assert (got['CP'], got['CR'], got['OP'], got['OR']) == (1.0, 0.5, 0.5, 0.5)
    assert got['mAP'] == 1.0  # class 0 ranks img0 (.9) above img1 (.2), both positive
    # Pedestrian conventions (Rethinking-PAR, 0 / 0 = 0):
    #   attr 1 has no positive image: TPR 0, TNR 1/2 -> (0 + 1/2) / 2 = 1/4;
    #   attr 0: TPR 1/2, no negative image so TNR 0 -> 1/4.  mA = 1/4.
    #   img0 G={0} P={0} -> 1, 1, 1;  img1 G={0} P={1} -> acc 0, prec 0, rec 0.
    got = pedestrian_attribute_metrics(scores=scores, labels=labels)
    assert got == {'mA': 0.25, 'accuracy': 0.5, 'precision': 0.5, 'recall': 0.5, 'F1': 0.5}
    # An image with nothing true and nothing predicted scores 0, not 1.
    got = pedestrian_attribute_metrics(scores=[[0.1, 0.1]], labels=[[0, 0]])
    assert (got['accuracy'], got['precision'], got['recall'], got['F1']) == (0, 0, 0, 0)
    # Nothing predicted at all: OP and OF1 are 0, not NaN.
    got = coco_metrics(scores=[[0.1], [0.2]], labels=[[1], [0]])
    assert (got['CP'], got['OP'], got['OF1'], got['CF1']) == (0.0, 0.0, 0.0, 0.0)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match='0 or 1'):
        coco_metrics(scores=PROBS, labels=LABELS * 2)
    with pytest.raises(ValueError, match=r'\(N, K\)'):
        coco_metrics(scores=PROBS[:, :2], labels=LABELS)
    with pytest.raises(ValueError, match='no class'):
        coco_metrics(scores=PROBS, labels=np.zeros_like(LABELS))
    with pytest.raises(ValueError, match='finite'):
        average_precision(scores=np.full((2, 1), np.nan), labels=[[1], [0]])
    with pytest.raises(ValueError, match='threshold'):
        pedestrian_attribute_metrics(scores=PROBS, labels=LABELS, threshold=1.0)
