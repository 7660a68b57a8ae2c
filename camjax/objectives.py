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

import jax.numpy as jnp

from camjax import losses
from camjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Term:
    """A registered loss term.

    `fn(inputs, **args)` gets the ObjectiveInputs mapping (logits (B,K),
    features (B,H,W,C), labels (B,), classifier {'kernel' (C,K), 'bias' (K,)},
    params) and returns a (B,) per-example vector or a batch-level scalar.
    `defaults` lists the term's own arguments; a config may set only these.
    """
    fn: Callable[..., Any]
    defaults: Mapping[str, Any]


def _cross_entropy(inputs, *, label_smoothing):
    return losses.softmax_cross_entropy(logits=inputs['logits'], labels=inputs['labels'],
                                        label_smoothing=label_smoothing)


TERMS: dict[str, Term] = {
    'cross_entropy': Term(_cross_entropy, {'label_smoothing': 0.0}),
}


def _term_args(term: Mapping[str, Any]) -> dict:
    return {k: v for k, v in term.items() if k not in ('name', 'weight')}


def validate_terms(terms: Sequence[Mapping[str, Any]]) -> None:
    """Raise ConfigError naming the first bad entry of `config.loss`."""
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
    if terms[0]['name'] != 'cross_entropy':
        raise ConfigError("loss[0] must be the classification term 'cross_entropy'")


def build_objective(terms: Sequence[Mapping[str, Any]]):
    """Return `objective(inputs, example_weights) -> (total, {name: weighted value})`.

    `example_weights` (B,) are 1 for real examples and 0 for padding; per-example
    terms are averaged with them, batch-level scalars are used as they are.
    """
    resolved = [(t['name'], float(t.get('weight', 1.0)),
                 {**TERMS[t['name']].defaults, **_term_args(t)}) for t in terms]

    def objective(inputs, example_weights):
        total_weight = jnp.maximum(jnp.sum(example_weights), 1.0)
        values = {}
        for name, weight, args in resolved:
            value = TERMS[name].fn(inputs, **args)
            if value.ndim == 1:
                value = jnp.sum(value * example_weights) / total_weight
            values[name] = weight * value
        return sum(values.values()), values

    return objective
