"""Runs that differ from the baseline in one numeric config field (a sweep
over lambda, weight decay, a penalty weight ...): accuracy and the squared
norm of the CAM classifier against that field. `analyze` adds the figure
when its runs hold such a sweep."""

import math

from camjax.analysis.figures import figure_png
from camjax.rundir import config_to_dict, differences


def swept_field(configs: dict, *, min_runs: int = 3):
    """(field, [names]) for the numeric config field along which the most
    runs differ from the first (the baseline) and in nothing else, the
    baseline included; None when fewer than `min_runs` runs form one.
    `configs`: {name: run config}, baseline first."""
    names = list(configs)
    base = config_to_dict(configs[names[0]])
    by_field = {}
    for name in names[1:]:
        diffs = differences(base, config_to_dict(configs[name]))
        if len(diffs) == 1:
            (field, (old, new)), = diffs.items()
            if all(_is_number(v) for v in (old, new)):
                by_field.setdefault(field, [names[0]]).append(name)
    if not by_field:
        return None
    field, members = max(by_field.items(), key=lambda item: len(item[1]))
    return (field, members) if len(members) >= min_runs else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def field_value(config, field: str):
    node = config_to_dict(config)
    for part in field.split('.'):
        node = node[part]
    return node


def sweep_png(field: str, rows: list[dict]) -> bytes:
    """Two panels against `field` (log scale where every value is > 0,
    symmetric-log when 0 is among them): validation accuracy of the selected
    checkpoint and test accuracy, and ||W||_2^2 of the CAM classifier.
    `rows`: {'value', 'val_accuracy' (or None), 'test_accuracy',
    'w_norm_sq'}, one per run."""
    from matplotlib.figure import Figure
    rows = sorted(rows, key=lambda r: r['value'])
    values = [r['value'] for r in rows]
    figure = Figure(figsize=(10, 3.6))
    acc_ax, norm_ax = figure.subplots(1, 2)
    for key, label, style in (('val_accuracy', 'validation (selected checkpoint)', 'o-'),
                              ('test_accuracy', 'test', 's--')):
        points = [(r['value'], r[key]) for r in rows if r.get(key) is not None]
        if points:
            acc_ax.plot(*zip(*points, strict=True), style, label=label)
    norm_ax.plot(values, [r['w_norm_sq'] for r in rows], 'o-', color='C2')
    positive = [v for v in values if v > 0]
    for ax in (acc_ax, norm_ax):
        if positive and min(values) >= 0 and max(positive) / min(positive) >= 100:
            if min(values) == 0:
                ax.set_xscale('symlog', linthresh=min(positive))
            else:
                ax.set_xscale('log')
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(field)
    acc_ax.set(ylabel='accuracy', title=f'Accuracy against {field}')
    acc_ax.legend(fontsize=8)
    norm_ax.set(ylabel='||W||_2^2', title='Squared norm of the CAM classifier W')
    if all(r['w_norm_sq'] > 0 and math.isfinite(r['w_norm_sq']) for r in rows):
        norm_ax.set_yscale('log')
    return figure_png(figure, dpi=100, bbox_inches='tight')
