"""Groups of runs that share one recipe and differ only in their seed, for
`analyze` (`evaluation.groups`): each group's mean and standard deviation of
every headline metric, and, for every group against the baseline group (the
group of the first run), a paired t-test over seed-matched pairs.

A pair is the two groups' runs with the same `seed`. The test is Student's
paired t-test: d_i = treated_i - baseline_i over the n pairs,
t = mean(d) / (std(d, ddof=1) / sqrt(n)) with n - 1 degrees of freedom,
two-sided. It asks whether the recipe changes the metric beyond seed-to-seed
noise, which a per-pair McNemar (one test set, one seed) cannot.

Host-side numpy only; scipy (a test dependency) checks the t distribution in
tests/test_seeds.py.
"""

import math

import numpy as np

from camjax.errors import CamjaxError
from camjax.rundir import config_to_dict, differences

# Fields that may differ between the seeds of one recipe: `seed` itself and
# settings that change how a run is executed or logged, not what it computes.
NOT_RECIPE = ('seed', 'model.conv_impl', 'train.log_every', 'train.checkpoint_every',
              'train.keep_checkpoints', 'dataset.num_threads', 'evaluation')


def student_t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with integer `df` >= 1, exactly, by the
    finite series of Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even
    df) for A(t|df) = P(|T| <= t), with theta = atan(|t| / sqrt(df))."""
    if df < 1 or int(df) != df:
        raise ValueError(f'df must be a positive integer, got {df}')
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # 2/pi [theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)], to cos^(df-2)
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for j in range(1, (df - 1) // 2):
            term *= (2 * j) / (2 * j + 1) * c * c
            total += term
        a = 2 / math.pi * (theta + s * c * total)
    else:  # sin [1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...], to cos^(df-2)
        term, total = 1.0, 1.0
        for j in range(1, df // 2):
            term *= (2 * j - 1) / (2 * j) * c * c
            total += term
        a = s * total
    return min(1.0, max(0.0, 1.0 - a))


def paired_t_test(*, treated, baseline) -> dict:
    """Paired two-sided t-test of `treated` against `baseline` (equal-length
    sequences, one value per seed-matched pair). {'n', 'mean_difference',
    'std_difference', 't', 'p'}; t and p are None for fewer than 2 pairs,
    and for differences all equal (t is +-inf, p 0, unless all are 0: p 1)."""
    d = np.asarray(treated, np.float64) - np.asarray(baseline, np.float64)
    n = int(d.size)
    out = {'n': n, 'mean_difference': float(d.mean()) if n else None,
           'std_difference': float(d.std(ddof=1)) if n > 1 else None, 't': None, 'p': None}
    if n < 2:
        return out
    mean, std = out['mean_difference'], out['std_difference']
    if std == 0:
        out['t'], out['p'] = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
        return out
    out['t'] = mean / (std / math.sqrt(n))
    out['p'] = student_t_two_sided_p(out['t'], n - 1)
    return out


def group_runs(names, configs: dict, groups) -> dict:
    """{group: [run names]} in first-seen order, from one group label per
    run (`evaluation.groups`, parallel to `evaluation.runs`). Refuses a
    group whose runs differ in anything but their seed (NOT_RECIPE) or
    repeat a seed: their mean would not be one recipe's. (The schema has
    checked that there is one label per run.)"""
    members = {}
    for name, group in zip(names, groups, strict=True):
        members.setdefault(group, []).append(name)
    for group, runs in members.items():
        first = config_to_dict(configs[runs[0]])
        seeds = {}
        for name in runs:
            diffs = [f for f in differences(first, config_to_dict(configs[name]))
                     if not any(f == k or f.startswith(k + '.') for k in NOT_RECIPE)]
            if diffs:
                raise CamjaxError(f'group {group!r}: run {name!r} differs from {runs[0]!r} in '
                                  f'{diffs[0]} (a group is one recipe over several seeds)')
            seed = int(configs[name].seed)
            if seed in seeds:
                raise CamjaxError(f'group {group!r}: runs {seeds[seed]!r} and {name!r} both '
                                  f'have seed {seed}')
            seeds[seed] = name
    return members


def summarize(members: dict, metrics: dict, configs: dict) -> dict:
    """Per group, the mean / std (ddof=1) / n of each metric, and for every
    other group the paired test against the first group over the seeds both
    hold. `metrics`: {run name: {metric: value or None}}. Metrics missing
    (None) in a run are left out of its group's numbers."""
    baseline = next(iter(members))
    keys = [k for k in next(iter(metrics.values())) if _numeric(metrics, k)]
    out = {'baseline': baseline, 'groups': {}, 'paired': {}}
    for group, runs in members.items():
        stats = {}
        for key in keys:
            values = [metrics[n][key] for n in runs if metrics[n].get(key) is not None]
            stats[key] = {'n': len(values), 'mean': float(np.mean(values)) if values else None,
                          'std': float(np.std(values, ddof=1)) if len(values) > 1 else None}
        out['groups'][group] = {'runs': runs, 'seeds': [int(configs[n].seed) for n in runs],
                                'metrics': stats}
    by_seed = {g: _by_seed(runs, configs) for g, runs in members.items()}
    for group in list(members)[1:]:
        common = sorted(set(by_seed[group]) & set(by_seed[baseline]))
        tests = {}
        for key in keys:
            pairs = [(metrics[by_seed[group][s]][key], metrics[by_seed[baseline][s]][key])
                     for s in common]
            pairs = [p for p in pairs if None not in p]
            tests[key] = paired_t_test(treated=[p[0] for p in pairs],
                                       baseline=[p[1] for p in pairs])
        out['paired'][group] = {'seeds': common, 'tests': tests}
    return out


def seed_matched_baseline(members: dict, configs: dict) -> dict:
    """{run: the baseline group's run with its seed} for every run outside
    the baseline group whose seed the baseline group holds: the pairs of the
    per-pair McNemar tests."""
    groups = list(members)
    by_seed = _by_seed(members[groups[0]], configs)
    return {n: by_seed[int(configs[n].seed)] for g in groups[1:] for n in members[g]
            if int(configs[n].seed) in by_seed}


def _by_seed(runs, configs: dict) -> dict:
    return {int(configs[n].seed): n for n in runs}


def report_rows(summary: dict) -> tuple[list[dict], list[dict]]:
    """(per-group rows: 'mean +- std (n)' per metric; paired-test rows)."""
    group_rows = []
    for group, g in summary['groups'].items():
        row = {'group': group, 'seeds': ', '.join(map(str, g['seeds']))}
        for key, s in g['metrics'].items():
            row[key] = ('' if s['mean'] is None else f'{s["mean"]:.4f}' +
                        ('' if s['std'] is None else f' ± {s["std"]:.4f}') + f' (n={s["n"]})')
        group_rows.append(row)
    paired_rows = []
    for group, g in summary['paired'].items():
        for key, test in g['tests'].items():
            paired_rows.append({
                'group': f'{group} - {summary["baseline"]}', 'metric': key, 'pairs': test['n'],
                'mean difference': test['mean_difference'],
                'std of differences': test['std_difference'], 't': test['t'], 'p': test['p']})
    return group_rows, paired_rows


def _numeric(metrics: dict, key: str) -> bool:
    values = [m.get(key) for m in metrics.values() if m.get(key) is not None]
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                for v in values)
