"""Seed groups in analyze (camjax/analysis/seeds.py): the t distribution and
the paired t-test against scipy, the refusal of groups that are not one
recipe, and an analysis of runs trained for the test, grouped by seed."""

import math

import numpy as np
import pytest
from conftest import small_config

from camjax.analysis import seeds
from camjax.errors import CamjaxError

scipy_stats = pytest.importorskip('scipy.stats')


@pytest.mark.parametrize('df', [1, 2, 3, 4, 5, 8, 13, 30])
def test_two_sided_t_p_matches_scipy(df):
    for t in (0.0, 0.3, -1.0, 2.0, 4.3027, -9.5, 40.0):
        assert seeds.student_t_two_sided_p(t, df) == pytest.approx(
            2 * scipy_stats.t.sf(abs(t), df), rel=1e-9, abs=1e-15)
    assert seeds.student_t_two_sided_p(math.inf, df) == 0.0
    with pytest.raises(ValueError, match='positive integer'):
        seeds.student_t_two_sided_p(1.0, 0)


def test_paired_t_test_matches_scipy_ttest_rel():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        base = rng.normal(0.8, 0.01, n)
        treated = base + rng.normal(0.004, 0.003, n)
        got = seeds.paired_t_test(treated=treated, baseline=base)
        want = scipy_stats.ttest_rel(treated, base)
        assert got['n'] == n
        assert got['t'] == pytest.approx(want.statistic, rel=1e-10)
        assert got['p'] == pytest.approx(want.pvalue, rel=1e-8)
        assert got['mean_difference'] == pytest.approx(np.mean(treated - base))
    one = seeds.paired_t_test(treated=[0.9], baseline=[0.8])
    assert one['t'] is None and one['p'] is None and one['mean_difference'] == pytest.approx(0.1)
    same = seeds.paired_t_test(treated=[0.75, 0.5], baseline=[0.5, 0.25])  # d = 1/4 twice
    assert same['t'] == math.inf and same['p'] == 0.0
    assert seeds.paired_t_test(treated=[0.5, 0.6], baseline=[0.5, 0.6])['p'] == 1.0


def _configs(**per_run):
    out = {}
    for name, overrides in per_run.items():
        out[name] = small_config(**overrides)
    return out


def test_a_group_must_be_one_recipe_over_distinct_seeds():
    ok = _configs(a0={'seed': 0}, a1={'seed': 1, 'model.conv_impl': 'onednn'},
                  b0={'seed': 0, 'optimizer.learning_rate': 0.1})
    assert seeds.group_runs(list(ok), ok, ('a', 'a', 'b')) == {'a': ['a0', 'a1'], 'b': ['b0']}
    with pytest.raises(CamjaxError, match=r"group 'a': run 'b0' differs from 'a0' in "
                                          r'optimizer.learning_rate'):
        seeds.group_runs(list(ok), ok, ('a', 'a', 'a'))
    twins = _configs(a0={'seed': 3}, a1={'seed': 3})
    with pytest.raises(CamjaxError, match="runs 'a0' and 'a1' both have seed 3"):
        seeds.group_runs(list(twins), twins, ('a', 'a'))


def test_analyze_reports_seed_groups_of_runs_made_for_the_test(tmp_path):
    """Two recipes (learning rates) x two seeds of a tiny ResNet-8: the
    report's group means and paired test are those of the runs' own test
    accuracies, and each per-class McNemar pairs runs of the same seed."""
    from camjax.analysis.analyze import analyze
    from camjax.data import open_splits
    from camjax.training.train import train_and_evaluate
    runs, accuracy = {}, {}
    for recipe, lr in (('low', 0.02), ('high', 0.1)):
        for seed in (0, 1):
            name = f'{recipe}{seed}'
            config = small_config(**{'seed': seed, 'optimizer.learning_rate': lr,
                                     'train.num_steps': 4})
            runs[name] = str(tmp_path / name)
            _, record = train_and_evaluate(config, runs[name], open_splits(config.dataset))
            accuracy[name] = record['test']['accuracy']
    analysis = small_config(**{
        'mode': 'analyze', 'evaluation.runs': tuple(runs.values()),
        'evaluation.groups': ('low', 'low', 'high', 'high'), 'evaluation.fgsm_eps': (),
        'evaluation.landscape_batches': 0, 'evaluation.cam_grid_images': 0})
    summary = analyze(analysis, str(tmp_path / 'compare'))
    groups = summary['groups']
    assert groups['baseline'] == 'low' and groups['groups']['high']['seeds'] == [0, 1]
    for recipe in ('low', 'high'):
        values = [accuracy[f'{recipe}{s}'] for s in (0, 1)]
        stats = groups['groups'][recipe]['metrics']['accuracy']
        assert stats['n'] == 2
        assert stats['mean'] == pytest.approx(np.mean(values))
        assert stats['std'] == pytest.approx(np.std(values, ddof=1))
    test = groups['paired']['high']['tests']['accuracy']
    diffs = [accuracy[f'high{s}'] - accuracy[f'low{s}'] for s in (0, 1)]
    assert test['n'] == 2 and test['mean_difference'] == pytest.approx(np.mean(diffs))
    if np.std(diffs) > 0:
        assert test['p'] == pytest.approx(scipy_stats.ttest_rel(
            [accuracy['high0'], accuracy['high1']], [accuracy['low0'], accuracy['low1']]).pvalue)
    assert {n: c['baseline'] for n, c in summary['per_class'].items()} == {
        'high0': 'low0', 'high1': 'low1'}
    html = (tmp_path / 'compare' / 'report.html').read_text()
    assert 'Seed groups' in html and 'high - low' in html
