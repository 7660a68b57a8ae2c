"""Config loss terms -> one pure objective function.

`config.loss` is a sequence of terms such as
`(dict(name='cross_entropy', weight=1.0, label_smoothing=0.1), ...)`. Each
registered term maps the model output to a per-example (B,) vector or a
scalar; the objective takes the weighted mean over valid examples and sums the
weighted terms. It returns `(total, {term_name: weighted_value})` so every term
is logged on its own. This is the only module that knows how terms combine.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from camjax import losses
from camjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Term:
    """A registered loss term.

    `fn(inputs, **args)` gets the objective inputs (logits (B,K), features
    (B,H,W,C), labels (B,), classifier {'kernel' (C,K), 'bias' (K,)}, params,
    weights (B,) = 1 for real examples, 0 for padding) and returns a (B,)
    per-example vector or a scalar that already accounts for `weights`.
    `defaults` lists the term's own arguments; a config may set only these.
    `check(args, num_classes)` returns an error message for bad values, or None;
    num_classes is None before the dataset is known. `classifies`: the term
    is linear in its target, so under mixup the objective takes it as
    lam x term(labels) + (1 - lam) x term(mix_labels) (`camjax.training.mixup`).
    """
    fn: Callable[..., Any]
    defaults: Mapping[str, Any]
    check: Callable[[Mapping[str, Any], int | None], str | None] = lambda args, k: None
    classifies: bool = False


def _cross_entropy(inputs, *, label_smoothing):
    return losses.softmax_cross_entropy(logits=inputs['logits'], labels=inputs['labels'],
                                        label_smoothing=label_smoothing)


def _weighted_sigmoid_ce(inputs):
    return losses.weighted_sigmoid_ce_per_example(logits=inputs['logits'], labels=inputs['labels'],
                                                  pos_rate=inputs['pos_rate'])


def negative_classes(inputs, k):
    """(B,k) indices of each example's top-k scoring negative classes and
    their validity (HNC paper, Sec. 3.1). Negatives exclude every positive:
    the label, all positive labels of multi-label data, and under mixup the
    partner's label too, unless lam = 1 mixed nothing in."""
    logits = inputs['logits']
    positives = _positives(inputs['labels'], logits.shape[-1])
    if 'mix_labels' in inputs:
        partner = inputs['mix_lam'][:, None] < 1
        positives |= _positives(inputs['mix_labels'], logits.shape[-1]) & partner
    return losses.top_negative_classes(logits=logits, positives=positives, k=k)


def _negative_cams(inputs, k):
    """CAMs (B,k,H,W) of each example's top-k negative classes, and their validity."""
    classes, valid = negative_classes(inputs, k)
    cams = losses.class_activation_maps(features=inputs['features'],
                                        kernel=inputs['classifier']['kernel'],
                                        bias=inputs['classifier']['bias'], classes=classes)
    return cams, valid


def _positives(labels, num_classes):
    """(B,K) bool: the classes of single-label (B,) or multi-label (B,K) labels."""
    if labels.ndim == 2:  # multi-label: every positive class
        return labels > 0
    return jax.nn.one_hot(labels, num_classes, dtype=bool)


def _hnc_mse(inputs, *, k, alpha):
    cams, valid = _negative_cams(inputs, k)
    real = inputs['weights'][:, None] > 0
    return losses.hnc_mse(cams=cams, alpha=alpha, valid=valid & real)


def _hnc_kd(inputs, *, k):
    cams, valid = _negative_cams(inputs, k)
    return losses.hnc_kd_per_example(cams=cams, valid=valid)


def _check_k(args, num_classes):
    if args['k'] < 1:
        return f"k must be >= 1, got {args['k']}"
    if num_classes is not None and args['k'] > num_classes - 1:
        # k = K would select the ground-truth class too and flatten its CAM.
        return (f"k={args['k']} exceeds the {num_classes - 1} negative classes of a "
                f'{num_classes}-class dataset (k <= K-1)')
    return None


def _classifier_penalty(inputs, **args):
    return losses.classifier_weight_penalty(kernel=inputs['classifier']['kernel'], **args)


def _check_penalty(args, num_classes):
    if args['form'] not in losses.PENALTY_FORMS:
        return f"form={args['form']!r} must be one of {losses.PENALTY_FORMS}"
    if args['split_norm'] not in losses.SPLIT_NORMS:
        return f"split_norm={args['split_norm']!r} must be one of {losses.SPLIT_NORMS}"
    if min(args['lam'], args['lam_pos'], args['lam_neg']) < 0:
        return 'lam, lam_pos and lam_neg must be >= 0'
    return None


TERMS: dict[str, Term] = {
    'cross_entropy': Term(_cross_entropy, {'label_smoothing': 0.0},
                          lambda a, k: None if 0 <= a['label_smoothing'] < 1
                          else 'label_smoothing must be in [0, 1)', classifies=True),
    # HNC paper, Eq. 8: multi-label classification (Eq. 9 adds an HNC term).
    'weighted_sigmoid_ce': Term(_weighted_sigmoid_ce, {}, classifies=True),
    # HNC paper, Eq. 2 and Eq. 5, on the top-k negative classes.
    'hnc_mse': Term(_hnc_mse, {'k': 10, 'alpha': 0.0}, _check_k),
    'hnc_kd': Term(_hnc_kd, {'k': 10}, _check_k),
    # lam defaults to 1 so that the term's `weight` is the penalty strength.
    'classifier_penalty': Term(_classifier_penalty, {'form': 'l1', 'lam': 1.0, 'lam_pos': 1.0,
                                                     'lam_neg': 1.0, 'split_norm': 'l1'},
                               _check_penalty),
}


def _term_args(term: Mapping[str, Any]) -> dict:
    return {k: v for k, v in term.items() if k not in ('name', 'weight')}


# The first term classifies: softmax CE for single-label data, weighted sigmoid
# CE for multi-label data.
CLASSIFICATION_TERMS = {False: 'cross_entropy', True: 'weighted_sigmoid_ce'}


def objective_inputs(logits, features, labels, params, pos_rate, mix=None) -> dict:
    """What every objective term reads: the model outputs, labels, params,
    the CAM classifier and (multi-label) the training split's positive rates.
    `mix`: (partner labels, lam (B,)) of a mixup batch (`camjax.training.mixup`)."""
    from camjax.models import CLASSIFIER
    inputs = {'logits': logits, 'features': features, 'labels': labels, 'params': params,
              'classifier': params[CLASSIFIER], 'pos_rate': pos_rate}
    if mix is not None:
        inputs['mix_labels'], inputs['mix_lam'] = mix
    return inputs


def validate_terms(terms: Sequence[Mapping[str, Any]], *, num_classes: int | None = None,
                   multilabel: bool | None = None) -> None:
    """Raise ConfigError naming the first bad entry of `config.loss`. With
    `num_classes` and `multilabel`, also the checks that need the dataset
    (HNC's k, the classification term matching the labels)."""
    if not isinstance(terms, (list, tuple)) or not terms:
        raise ConfigError('loss must be a non-empty sequence of terms, e.g. '
                          "(dict(name='cross_entropy'),)")
    seen = set()
    for i, term in enumerate(terms):
        where = f'loss[{i}]'
        if not isinstance(term, Mapping) or 'name' not in term:
            raise ConfigError(f'{where} must be a dict with a name, got {term!r}')
        name = term['name']
        if name not in TERMS:
            raise ConfigError(f'{where}.name={name!r} is not a registered loss term '
                              f'(choose from {sorted(TERMS)})')
        if name in seen:
            raise ConfigError(f'{where}.name={name!r} appears twice')
        seen.add(name)
        weight = term.get('weight', 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f'{where}.weight must be a number >= 0, got {weight!r}')
        defaults = TERMS[name].defaults
        for key, value in _term_args(term).items():
            if key not in defaults:
                raise ConfigError(f'unknown config key {where}.{key!r} for term {name!r} '
                                  f'(its arguments: {sorted(defaults)})')
            if type(defaults[key]) is float and isinstance(value, int) \
                    and not isinstance(value, bool):
                continue
            if type(value) is not type(defaults[key]):
                raise ConfigError(f'{where}.{key} must be of type '
                                  f'{type(defaults[key]).__name__}, got {value!r}')
        problem = TERMS[name].check({**defaults, **_term_args(term)}, num_classes)
        if problem:
            raise ConfigError(f'{where} ({name}): {problem}')
    first = terms[0]['name']
    if multilabel is None and first not in CLASSIFICATION_TERMS.values():
        raise ConfigError(f'loss[0] must be a classification term '
                          f'({sorted(CLASSIFICATION_TERMS.values())}), got {first!r}')
    if multilabel is not None and first != CLASSIFICATION_TERMS[multilabel]:
        kind = 'multi-label' if multilabel else 'single-label'
        raise ConfigError(f'loss[0] must be {CLASSIFICATION_TERMS[multilabel]!r} for '
                          f'{kind} data, got {first!r}')


def build_objective(terms: Sequence[Mapping[str, Any]]):
    """Return `objective(inputs, example_weights) -> (total, {name: weighted value})`.

    `example_weights` (B,) are 1 for real examples and 0 for padding; per-example
    terms are averaged with them, batch-level scalars are used as they are.
    """
    resolved = [(t['name'], float(t.get('weight', 1.0)),
                 {**TERMS[t['name']].defaults, **_term_args(t)}) for t in terms]

    def objective(inputs, example_weights):
        total_weight = jnp.maximum(jnp.sum(example_weights), 1.0)
        inputs = {**inputs, 'weights': example_weights}
        values = {}
        for name, weight, args in resolved:
            value = _term_value(TERMS[name], inputs, args)
            if value.ndim == 1:
                value = jnp.sum(value * example_weights) / total_weight
            values[name] = weight * value
        return sum(values.values()), values

    return objective


def _term_value(term: Term, inputs, args):
    """The term on `inputs`; on a mixup batch a classification term is
    lam x term(y_i) + (1 - lam) x term(y_j), i.e. the term of the mixed
    target lam y_i + (1 - lam) y_j, by linearity (mixup, Zhang et al., Eq. 1)."""
    value = term.fn(inputs, **args)
    if term.classifies and 'mix_labels' in inputs:
        lam = inputs['mix_lam']
        value = lam * value + (1.0 - lam) * term.fn({**inputs, 'labels': inputs['mix_labels']},
                                                     **args)
    return value


def negative_cam_peakiness(inputs, k: int):
    """(B,) mean over each example's top-k negative classes of max_hw M_o -
    mean_hw M_o: how peaked the negative CAMs are, the quantity HNC_kd bounds
    from above (HNC paper, Proposition 1). An evaluation diagnostic."""
    cams, valid = _negative_cams(inputs, k)
    peak = jnp.max(cams, axis=(2, 3)) - jnp.mean(cams, axis=(2, 3))
    return jnp.sum(peak * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)
