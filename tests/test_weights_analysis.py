"""Classifier-weight analysis: statistics on hand-built kernels, the
positive-weights-only switch, the histogram / accuracy-vs-sparsity PNGs and
a linear model's weight images."""

import io
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config
from PIL import Image

from camjax.analysis.field_sweep import swept_field
from camjax.analysis.weights import (
    accuracy_vs_sparsity_png,
    class_weight_images_png,
    histogram_bins,
    weight_histogram_png,
    weight_stats,
)

# (C=3, K=4): |w| < 1e-3 at four places (one exact zero); negatives -2, -1, -1e-4.
KERNEL = np.array([[1.0, -2.0, 0.0, 5e-4],
                   [0.5, 3.0, -1.0, 2.0],
                   [-1e-4, 1.5, 2e-4, 4.0]])


def _png_size(png: bytes):
    assert png.startswith(b'\x89PNG\r\n\x1a\n')
    return Image.open(io.BytesIO(png)).size


def test_weight_stats_hand_matrix():
    stats = weight_stats(KERNEL, eps=1e-3, per_class=True)
    abs_sum = 1 + 2 + 0 + 5e-4 + 0.5 + 3 + 1 + 2 + 1e-4 + 1.5 + 2e-4 + 4
    assert stats['num_weights'] == 12
    assert stats['sparsity'] == pytest.approx(4 / 12)
    assert stats['num_positive'] == 8
    assert stats['num_negative'] == 3
    assert stats['negative_mass_share'] == pytest.approx((2 + 1 + 1e-4) / abs_sum, rel=1e-12)
    assert stats['l1'] == pytest.approx(abs_sum, rel=1e-12)
    assert stats['mean_abs'] == pytest.approx(abs_sum / 12, rel=1e-12)
    assert stats['l2'] == pytest.approx(math.sqrt(np.sum(KERNEL ** 2)), rel=1e-12)
    np.testing.assert_allclose(stats['per_class_sparsity'], [1 / 3, 0, 2 / 3, 1 / 3])
    assert 'per_class_sparsity' not in weight_stats(KERNEL)


def test_weight_stats_eps_and_edge_cases():
    # A larger eps counts more weights as zero: 0.5 joins at eps=0.6.
    assert weight_stats(KERNEL, eps=0.6)['sparsity'] == pytest.approx(5 / 12)
    # No negatives -> share 0; all exact zeros -> share undefined (NaN).
    assert weight_stats(np.abs(KERNEL))['negative_mass_share'] == 0.0
    zeros = weight_stats(np.zeros((2, 3)))
    assert math.isnan(zeros['negative_mass_share'])
    assert zeros['sparsity'] == 1.0 and zeros['num_positive'] == zeros['num_negative'] == 0
    # A jax array is accepted and gives the same numbers.
    assert weight_stats(jnp.asarray(KERNEL, jnp.float32))['sparsity'] == pytest.approx(4 / 12)
    with pytest.raises(ValueError, match='kernel must be'):
        weight_stats(np.ones(3))
    with pytest.raises(ValueError, match='eps'):
        weight_stats(KERNEL, eps=0.0)


def test_histogram_bins_are_shared():
    edges = histogram_bins({'a': KERNEL, 'b': 2 * KERNEL}, bins=10)
    assert edges.shape == (11,)
    assert edges[0] == 0.0 and edges[-1] == pytest.approx(8.0)  # max |w| of every run


def test_weight_histogram_png():
    rng = np.random.default_rng(0)
    dense = rng.normal(0, 0.05, (64, 10))
    sparse = np.where(rng.random((64, 10)) < 0.7, 0.0, dense)
    png = weight_histogram_png({'none': dense, 'L1': sparse, 'L2': 0.5 * dense,
                                'positive': np.abs(dense)}, bins=30, title='weights')
    assert _png_size(png) == (1200, 450)


def test_weight_histogram_writes_path(tmp_path):
    path = tmp_path / 'hist.png'
    png = weight_histogram_png({'only': KERNEL}, bins=np.linspace(0, 5, 6), path=path)
    assert path.read_bytes() == png
    with pytest.raises(ValueError, match='empty'):
        weight_histogram_png({})


def test_accuracy_vs_sparsity_png(tmp_path):
    points = [
        {'name': 'none', 'sparsity': 0.02, 'accuracy': 0.71, 'loc_accuracy': 0.45},
        {'name': 'L1', 'sparsity': 0.64, 'accuracy': 0.72, 'loc_accuracy': 0.52},
        {'name': 'L2', 'sparsity': 0.05, 'accuracy': 0.715, 'loc_accuracy': None},
        {'name': 'HNC', 'sparsity': 0.10, 'accuracy': 0.73},
    ]
    path = tmp_path / 'scatter.png'
    png = accuracy_vs_sparsity_png(points, path=path)
    assert _png_size(png) == (700, 500)
    assert path.read_bytes() == png
    # No localization numbers at all is fine too.
    only_cls = [{'name': 'a', 'sparsity': 0.1, 'accuracy': 0.5, 'loc_accuracy': None}]
    assert _png_size(accuracy_vs_sparsity_png(only_cls)) == (700, 500)


def test_class_weight_images_of_a_linear_model(tmp_path):
    from camjax.analysis.analyze import analyze
    from camjax.data import open_splits
    from camjax.training.train import train_and_evaluate
    with pytest.raises(ValueError, match='8x8x3'):
        class_weight_images_png(np.zeros((10, 3)), image_size=8, class_names='abc')
    png = class_weight_images_png(np.random.default_rng(0).normal(size=(192, 12)),
                                  image_size=8, class_names=[str(k) for k in range(12)])
    assert _png_size(png)[0] > 0
    # analyze shows them for softmax-regression runs; three runs that differ
    # only in weight decay are a sweep: accuracy and ||W||^2 against it.
    lambdas = {'wd0': 0.0, 'wd1e-2': 1e-2, 'wd1': 1.0}
    for name, wd in lambdas.items():
        config = small_config(**{'model': dict(name='linear'), 'train.num_steps': 4,
                                 'optimizer.weight_decay': wd})
        train_and_evaluate(config, str(tmp_path / name), open_splits(config.dataset))
    analysis = small_config(**{'mode': 'analyze',
                               'evaluation.runs': tuple(str(tmp_path / n) for n in lambdas),
                               'evaluation.fgsm_eps': (), 'evaluation.landscape_batches': 0,
                               'evaluation.cam_grid_images': 0})
    summary = analyze(analysis, str(tmp_path / 'report'))
    html = (tmp_path / 'report' / 'report.html').read_text()
    assert "weights W[:, k] as an image" in html
    assert any('as_an_image' in f for f in os.listdir(tmp_path / 'report' / 'figures'))
    sweep = summary['sweep']
    assert sweep['field'] == 'optimizer.weight_decay'
    assert [r['value'] for r in sweep['runs']] == list(lambdas.values())
    norms = [r['w_norm_sq'] for r in sweep['runs']]
    assert norms[0] > norms[1] > norms[2] > 0  # a stronger L2 penalty, a smaller W
    assert all(0 <= r['val_accuracy'] <= 1 for r in sweep['runs'])
    assert 'accuracy and ||W||^2 against optimizer.weight_decay' in html


def test_swept_field_needs_runs_that_differ_in_one_number():
    base = small_config()
    runs = {'base': base, 'a': small_config(**{'optimizer.weight_decay': 0.0}),
            'b': small_config(**{'optimizer.weight_decay': 1e-2}),
            'c': small_config(**{'optimizer.weight_decay': 1e-2, 'seed': 1}),  # two fields
            'd': small_config(**{'dataset.random_flip': False})}  # a bool is no sweep
    assert swept_field(runs) == ('optimizer.weight_decay', ['base', 'a', 'b'])
    assert swept_field({k: runs[k] for k in ('base', 'a', 'c', 'd')}) is None  # too few


def test_log_axes_get_plain_tick_labels():
    # Texts are drawn literally (names come from data), so matplotlib's
    # mathtext tick labels of a log axis would read '$\mathdefault{10^{2}}$'.
    from matplotlib.figure import Figure

    from camjax.analysis.figures import figure_png
    figure = Figure()
    ax = figure.subplots()
    ax.plot([1e-3, 1e-1, 10], [1, 100, 1e4])
    ax.set_xscale('log')
    ax.set_yscale('symlog', linthresh=1.0)
    figure_png(figure)
    labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert '0.01' in labels and '100' in labels
    assert not any('$' in label or 'mathdefault' in label for label in labels)


def test_log_axis_within_one_decade_labels_its_minor_ticks():
    # ||W||^2 from 4.7 to 8.0 holds no power of 10: without minor labels the
    # axis would show no number at all.
    from matplotlib.figure import Figure

    from camjax.analysis.figures import figure_png
    figure = Figure()
    wide, narrow = figure.subplots(1, 2)
    wide.plot([0, 1, 2], [12.0, 1.37, 0.17])
    narrow.plot([0, 1, 2], [8.0, 7.2, 4.7])
    for ax in (wide, narrow):
        ax.set_yscale('log')
    figure_png(figure)

    def shown(ax, minor):
        low, high = ax.get_ylim()
        return [t.get_text() for t in ax.yaxis.get_ticklabels(minor=minor)
                if t.get_text() and low <= t.get_position()[1] <= high]
    assert shown(narrow, minor=False) == [] and shown(narrow, minor=True) == ['5', '6', '7', '8']
    assert shown(wide, minor=False) == ['1', '10'] and shown(wide, minor=True) == []
