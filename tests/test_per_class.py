"""Per-class paired comparison: exact binomial / McNemar p-values against
scipy.stats.binomtest, Holm and Benjamini-Hochberg against hand-worked
values, a constructed two-run example whose mean improves while two classes
get significantly worse, and the table / plot outputs."""

import io

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from camjax.analysis import per_class
from camjax.analysis.per_class import (
    adjust_p_values,
    binomial_two_sided_p,
    compare_per_class,
    mcnemar_exact_p,
    per_class_markdown,
    per_class_table_rows,
    plot_per_class_deltas,
)


# =============================================================================
# Exact tests
# =============================================================================
@pytest.mark.parametrize('p', [0.5, 0.3, 1 / 3, 0.1, 0.75, 0.01])
def test_binomial_matches_scipy_on_grid(p):
    for n in range(1, 26):
        ours = [binomial_two_sided_p(k=k, n=n, p=p) for k in range(n + 1)]
        ref = [stats.binomtest(k, n, p).pvalue for k in range(n + 1)]
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=0, err_msg=f'n={n}')


@pytest.mark.parametrize('k, n, p', [
    (50_500, 100_000, 0.5),   # p ~ 1.6e-3: log-space sums of 1e5 terms
    (49_000, 100_000, 0.49),  # k == pn exactly: p = 1
    (48_700, 100_000, 0.49),
    (1_050, 100_000, 0.01),
    (0, 100_000, 0.5),        # underflows to 0 in both
    (100_000, 100_000, 0.99999),
    (7, 1_000, 0.001),
])
def test_binomial_matches_scipy_for_large_n(k, n, p):
    np.testing.assert_allclose(binomial_two_sided_p(k=k, n=n, p=p),
                               stats.binomtest(k, n, p).pvalue, rtol=1e-8, atol=0)


def test_binomial_edge_cases():
    # k = 0 and k = n at p = 1/2: 2 * 2^-n.
    assert binomial_two_sided_p(k=0, n=10) == pytest.approx(2 ** -9, rel=1e-12)
    assert binomial_two_sided_p(k=10, n=10) == pytest.approx(2 ** -9, rel=1e-12)
    assert binomial_two_sided_p(k=0, n=0) == 1.0
    # Degenerate null: only k = 0 (p = 0) or k = n (p = 1) is possible.
    assert binomial_two_sided_p(k=0, n=5, p=0.0) == 1.0
    assert binomial_two_sided_p(k=1, n=5, p=0.0) == 0.0 == stats.binomtest(1, 5, 0.0).pvalue
    assert binomial_two_sided_p(k=5, n=5, p=1.0) == 1.0
    assert binomial_two_sided_p(k=4, n=5, p=1.0) == 0.0 == stats.binomtest(4, 5, 1.0).pvalue
    with pytest.raises(ValueError):
        binomial_two_sided_p(k=6, n=5)
    with pytest.raises(ValueError):
        binomial_two_sided_p(k=1, n=5, p=1.5)
    with pytest.raises(ValueError):
        binomial_two_sided_p(k=-1, n=5)


def _scipy_mcnemar(b, c):
    return 1.0 if b + c == 0 else stats.binomtest(int(b), int(b + c), 0.5).pvalue


def test_mcnemar_matches_scipy_on_grid():
    b, c = np.meshgrid(np.arange(31), np.arange(31), indexing='ij')
    ours = mcnemar_exact_p(b=b, c=c)
    assert ours.shape == (31, 31)
    ref = np.vectorize(_scipy_mcnemar)(b, c)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=0)
    assert ours[0, 0] == 1.0  # no discordant pairs
    assert ours[0, 12] == pytest.approx(2 ** -11, rel=1e-12)  # k = 0
    assert ours[12, 0] == pytest.approx(2 ** -11, rel=1e-12)  # k = n
    # Same as the general binomial test with p = 1/2.
    for bi, ci in [(3, 9), (9, 3), (0, 1), (15, 16), (20, 0)]:
        assert mcnemar_exact_p(b=bi, c=ci) == pytest.approx(
            binomial_two_sided_p(k=bi, n=bi + ci), rel=1e-12)


def test_mcnemar_large_counts_scalars_and_chunking(monkeypatch):
    pairs = [(4_000, 4_300), (0, 60_000), (25_000, 25_400), (1, 2)]
    b, c = np.array(pairs).T
    ref = [_scipy_mcnemar(bi, ci) for bi, ci in pairs]
    np.testing.assert_allclose(mcnemar_exact_p(b=b, c=c), ref, rtol=1e-8, atol=0)
    scalar = mcnemar_exact_p(b=4_000, c=4_300)
    assert isinstance(scalar, float)
    assert scalar == pytest.approx(ref[0], rel=1e-8)
    assert mcnemar_exact_p(b=0, c=0) == 1.0
    # A tiny grid budget forces one row per chunk; the answer must not change.
    grid_b, grid_c = np.meshgrid(np.arange(12), np.arange(12), indexing='ij')
    whole = mcnemar_exact_p(b=grid_b, c=grid_c)
    monkeypatch.setattr(per_class, '_GRID_ELEMENTS', 1)
    np.testing.assert_array_equal(mcnemar_exact_p(b=grid_b, c=grid_c), whole)
    with pytest.raises(ValueError):
        mcnemar_exact_p(b=[1, -1], c=[2, 2])
    with pytest.raises(ValueError):
        mcnemar_exact_p(b=1.5, c=2)


# =============================================================================
# Multiple-comparison correction
# =============================================================================
def test_holm_and_bh_hand_computed():
    p = [0.04, 0.001, 0.03, 0.5, 0.035]
    # Sorted: 0.001 (#1), 0.03 (#2), 0.035 (#4), 0.04 (#0), 0.5 (#3); m = 5.
    # Holm, (m - j + 1) p_(j): .005, .12, .105, .08, .5 -> running max
    #   .005, .12, .12, .12, .5.
    np.testing.assert_allclose(adjust_p_values(p, method='holm'),
                               [0.12, 0.005, 0.12, 0.5, 0.12], rtol=1e-12)
    assert np.array_equal(adjust_p_values(p), adjust_p_values(p, method='holm'))
    # BH, m p_(j) / j: .005, .075, .058333, .05, .5 -> running min from the top
    #   .005, .05, .05, .05, .5.
    np.testing.assert_allclose(adjust_p_values(p, method='bh'),
                               [0.05, 0.005, 0.05, 0.5, 0.05], rtol=1e-12)
    np.testing.assert_allclose(adjust_p_values(p, method='bh'),
                               stats.false_discovery_control(p, method='bh'), rtol=1e-12)
    np.testing.assert_array_equal(adjust_p_values(p, method='none'), p)


def test_holm_and_bh_clip_ties_and_nan():
    # Holm: 2 * 0.5 = 1, then max(1, 0.6) = 1. BH: min(2 * 0.5 / 1, 0.6) = 0.6.
    np.testing.assert_allclose(adjust_p_values([0.5, 0.6], method='holm'), [1.0, 1.0])
    np.testing.assert_allclose(adjust_p_values([0.5, 0.6], method='bh'), [0.6, 0.6])
    # Holm with m = 4: 4 * 0.9 would be 3.6; clipped to 1.
    np.testing.assert_allclose(adjust_p_values([0.9, 0.9, 0.9, 0.01], method='holm'),
                               [1.0, 1.0, 1.0, 0.04])
    # NaN (untested class) stays NaN and does not count in m (m = 2 here).
    out = adjust_p_values([0.01, np.nan, 0.04], method='holm')
    np.testing.assert_allclose(out, [0.02, np.nan, 0.04])
    assert adjust_p_values([], method='bh').shape == (0,)
    with pytest.raises(ValueError):
        adjust_p_values([0.1], method='bonferroni')
    with pytest.raises(ValueError):
        adjust_p_values([1.2])


# =============================================================================
# compare_per_class on a constructed example
# =============================================================================
NAMES = ('cat', 'dog', 'car', 'ship', 'tree')
# Per class: (both right, b = only baseline right, c = only treated right, both wrong).
#   cat:  40 images, baseline 36/40 = 90%, treated 20/40 = 50%  (b = 16, c = 0)
#   dog:  40 images, baseline 32/40 = 80%, treated 22/40 = 55%  (b = 12, c = 2)
#   car, ship, tree: 200 images each, 120 -> 132 right, 60% -> 66% (b = 2, c = 14)
CELLS = [(20, 16, 0, 4), (20, 12, 2, 6)] + [(118, 2, 14, 66)] * 3


def _paired_predictions(cells, num_classes, seed=0):
    labels, base, treated = [], [], []
    for k, counts in enumerate(cells):
        for (base_ok, treated_ok), n in zip([(1, 1), (1, 0), (0, 1), (0, 0)], counts,
                                            strict=True):
            wrong = (k + 1) % num_classes
            labels += [k] * n
            base += [k if base_ok else wrong] * n
            treated += [k if treated_ok else wrong] * n
    # Shuffled so nothing depends on images being grouped by class.
    order = np.random.default_rng(seed).permutation(len(labels))
    return (np.array(labels)[order], np.array(base)[order], np.array(treated)[order])


def test_compare_per_class_mean_up_two_classes_significantly_worse():
    labels, base, treated = _paired_predictions(CELLS, 5)
    r = compare_per_class(labels=labels, baseline_pred=base, treated_pred=treated,
                          num_classes=5, class_names=NAMES)
    np.testing.assert_array_equal(r.count, [40, 40, 200, 200, 200])
    np.testing.assert_array_equal(r.b, [16, 12, 2, 2, 2])
    np.testing.assert_array_equal(r.c, [0, 2, 14, 14, 14])
    np.testing.assert_allclose(r.baseline_accuracy, [0.9, 0.8, 0.6, 0.6, 0.6])
    np.testing.assert_allclose(r.treated_accuracy, [0.5, 0.55, 0.66, 0.66, 0.66])
    np.testing.assert_allclose(r.delta, [-0.4, -0.25, 0.06, 0.06, 0.06], atol=1e-12)
    # Raw exact McNemar p: cat 2 * 2^-16; dog 2 (1 + 14 + 91) / 2^14;
    # the others 2 (1 + 16 + 120) / 2^16.
    p_cat, p_dog, p_up = 2 ** -15, 212 / 2 ** 14, 274 / 2 ** 16
    np.testing.assert_allclose(r.p_value, [p_cat, p_dog, p_up, p_up, p_up], rtol=1e-12)
    # Holm, sorted p_cat < p_up = p_up = p_up < p_dog with factors 5, 4, 3, 2, 1:
    # 5 p_cat; 4 p_up (and the running max keeps it for the next two and for dog,
    # since p_dog = 0.01294 < 4 p_up = 0.01672).
    np.testing.assert_allclose(r.p_adjusted, [5 * p_cat] + [4 * p_up] * 4, rtol=1e-12)
    np.testing.assert_array_equal(r.significant, [True] * 5)
    assert r.direction == ('worse', 'worse', 'better', 'better', 'better')

    s = r.summary
    # Images: baseline 36 + 32 + 3 * 120 = 428 / 680; treated 20 + 22 + 3 * 132 = 438 / 680.
    assert s['num_images'] == 680 and s['num_classes_tested'] == 5
    assert s['baseline_accuracy'] == pytest.approx(428 / 680)
    assert s['treated_accuracy'] == pytest.approx(438 / 680)
    assert s['delta'] == pytest.approx(10 / 680)
    # Classes: (0.9 + 0.8 + 3 * 0.6) / 5 = 0.7 -> (0.5 + 0.55 + 3 * 0.66) / 5 = 0.606:
    # the class-balanced mean falls while the image mean rises.
    assert s['baseline_mean_class_accuracy'] == pytest.approx(0.7)
    assert s['treated_mean_class_accuracy'] == pytest.approx(0.606)
    assert s['delta_mean_class_accuracy'] == pytest.approx(-0.094)
    # Population std: deviations .2, .1, -.1, -.1, -.1 -> sqrt(0.08 / 5).
    assert s['baseline_class_accuracy_std'] == pytest.approx(np.sqrt(0.016))
    assert s['treated_class_accuracy_std'] == pytest.approx(np.std([0.5, 0.55, 0.66, 0.66, 0.66]))
    assert (s['num_better'], s['num_worse'], s['num_same']) == (3, 2, 0)
    assert (s['num_significantly_better'], s['num_significantly_worse']) == (3, 2)
    # Worst class of each run on its own: baseline 'car' (first of the 60% ties),
    # treated 'cat' at 50%.
    assert (s['baseline_worst_class'], s['baseline_worst_class_accuracy']) == ('car', 0.6)
    assert (s['treated_worst_class'], s['treated_worst_class_accuracy']) == ('cat', 0.5)
    assert (s['mcnemar_b'], s['mcnemar_c']) == (16 + 12 + 6, 0 + 2 + 42)
    assert s['mcnemar_p'] == pytest.approx(stats.binomtest(34, 78, 0.5).pvalue, rel=1e-10)
    assert r.headline == 'mean +1.5, but 2 classes significantly worse, worst class 60.0 -> 50.0'
    assert s['headline'] == r.headline


def test_compare_per_class_bh_empty_class_and_singular_headline():
    labels, base, treated = _paired_predictions(CELLS, 6)
    # A sixth class with no test images: NaN everywhere, out of m, out of summaries.
    r = compare_per_class(labels=labels, baseline_pred=base, treated_pred=treated,
                          num_classes=6, correction='bh')
    p_cat, p_dog, p_up = 2 ** -15, 212 / 2 ** 14, 274 / 2 ** 16
    # BH with m = 5, sorted ranks 1..5: 5 p_cat; 5 p_up / 4 (the min over ranks 2-4);
    # dog 5 p_dog / 5.
    np.testing.assert_allclose(r.p_adjusted[:5], [5 * p_cat, p_dog] + [5 * p_up / 4] * 3,
                               rtol=1e-12)
    assert r.count[5] == 0 and np.isnan(r.p_value[5]) and np.isnan(r.p_adjusted[5])
    assert np.isnan(r.baseline_accuracy[5]) and not r.significant[5] and r.direction[5] == ''
    assert r.summary['num_classes_tested'] == 5
    assert r.summary['baseline_mean_class_accuracy'] == pytest.approx(0.7)
    assert r.class_names[5] == '5'
    d = r.to_dict()
    assert d['classes'][5]['p_value'] is None and d['classes'][0]['b'] == 16

    # One class significantly worse; mean falls: sign and singular noun.
    labels, base, treated = _paired_predictions([(20, 16, 0, 4), (118, 2, 4, 76)], 2)
    r = compare_per_class(labels=labels, baseline_pred=base, treated_pred=treated,
                          num_classes=2)
    # Images: baseline 36 + 120 = 156 / 240, treated 20 + 122 = 142 / 240 -> -5.83 pp.
    assert r.headline == 'mean -5.8, and 1 class significantly worse, worst class 60.0 -> 50.0'
    assert r.summary['num_significantly_better'] == 0

    # The mean rises and no class is significantly worse: nothing to contrast.
    labels, base, treated = _paired_predictions([(20, 2, 14, 4), (30, 0, 0, 10)], 2)
    r = compare_per_class(labels=labels, baseline_pred=base, treated_pred=treated,
                          num_classes=2)
    # Images: baseline 22 + 30 = 52 / 80, treated 34 + 30 = 64 / 80 -> +15.0 pp.
    assert r.headline == 'mean +15.0, and 0 classes significantly worse, worst class 55.0 -> 75.0'


def test_compare_per_class_rejects_bad_input():
    ok = np.array([0, 1, 1])
    with pytest.raises(ValueError, match='same shape'):
        compare_per_class(labels=ok, baseline_pred=ok[:2], treated_pred=ok, num_classes=2)
    with pytest.raises(ValueError, match='num_classes'):
        compare_per_class(labels=ok + 1, baseline_pred=ok, treated_pred=ok, num_classes=2)
    with pytest.raises(ValueError, match='integer'):
        compare_per_class(labels=ok, baseline_pred=ok * 1.0, treated_pred=ok, num_classes=2)
    with pytest.raises(ValueError, match='correction'):
        compare_per_class(labels=ok, baseline_pred=ok, treated_pred=ok, num_classes=2,
                          correction='bonferroni')
    with pytest.raises(ValueError, match='class_names'):
        compare_per_class(labels=ok, baseline_pred=ok, treated_pred=ok, num_classes=2,
                          class_names=['a'])


# =============================================================================
# Table and plot
# =============================================================================
def _example():
    labels, base, treated = _paired_predictions(CELLS, 5)
    return compare_per_class(labels=labels, baseline_pred=base, treated_pred=treated,
                             num_classes=5, class_names=NAMES)


def test_table_rows_and_markdown():
    r = _example()
    rows = per_class_table_rows(r)
    assert [row['class'] for row in rows] == ['cat', 'dog', 'car', 'ship', 'tree']
    assert rows[0] == {'class': 'cat', 'n': '40', 'base': '90.0', 'treated': '50.0',
                       'delta': '-40.0', 'b': '16', 'c': '0', 'p': '3.05e-05',
                       'p_adj': '0.000153', 'sig': '*'}
    assert rows[2]['delta'] == '+6.0' and rows[2]['p_adj'] == '0.0167'
    by_class = per_class_table_rows(r, order='class')
    assert [row['class'] for row in by_class] == list(NAMES)
    md = per_class_markdown(r).splitlines()
    assert md[0] == r.headline
    assert md[2] == '| class | n | base | treated | delta | b | c | p | p_adj | sig |'
    assert md[4] == '| cat | 40 | 90.0 | 50.0 | -40.0 | 16 | 0 | 3.05e-05 | 0.000153 | * |'
    assert len(md) == 4 + 5


def test_plot_returns_png_and_marks_significant_bars(tmp_path):
    r = _example()
    path = tmp_path / 'deltas.png'
    png = plot_per_class_deltas(r, path=path)
    assert png.startswith(b'\x89PNG\r\n\x1a\n')
    assert path.read_bytes() == png
    assert Image.open(io.BytesIO(png)).size == (600, 450)  # 6 x 4.5 in at 100 dpi

    # Drawn into a caller's Axes: bars sorted by delta in percent points,
    # red for significantly worse, blue for significantly better, '*' on each.
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure
    ax = Figure().add_subplot()
    png = plot_per_class_deltas(r, ax=ax, title='t')
    assert png.startswith(b'\x89PNG')
    heights = [bar.get_height() for bar in ax.patches]
    np.testing.assert_allclose(heights, [-40, -25, 6, 6, 6], atol=1e-9)
    colours = [to_hex(bar.get_facecolor()) for bar in ax.patches]
    assert colours == ['#c0392b'] * 2 + ['#2471a3'] * 3
    assert [t.get_text() for t in ax.texts] == ['*'] * 5
    assert [t.get_text() for t in ax.get_xticklabels()] == list(NAMES)
    assert ax.get_title() == 't'
