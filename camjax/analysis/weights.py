"""The CAM classifier's weights: how sparse they are, how much of their mass
is negative, and how that relates to accuracy and localization across runs.

The CAM head is logits = GAP(features) @ W + b with W: (C, K), so the CAM of
class k is features @ W[:, k] (+ b[k]). L1 / L2 / sign-split penalties on W
and HNC losses all change W's distribution: L1 drives many weights to ~0,
penalties on negative weights shrink the negative tail. These functions
measure and plot that, on host, with numpy.

Plots use a `matplotlib.figure.Figure` on an Agg canvas, never pyplot, so
nothing global (backend, current figure) changes, and return PNG bytes.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np

from camjax.analysis.figures import figure_png


# =============================================================================
# Statistics
# =============================================================================
def _kernel(kernel) -> np.ndarray:
    w = np.asarray(kernel, np.float64)
    if w.ndim != 2:
        raise ValueError(f'kernel must be (C, K), got shape {w.shape}')
    if w.size == 0:
        raise ValueError('kernel is empty')
    if not np.all(np.isfinite(w)):
        raise ValueError('kernel must be finite')
    return w


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not eps > 0.0:
        raise ValueError(f'eps must be > 0, got {eps}')
    return eps


def weight_stats(kernel, *, eps: float = 1e-3, per_class: bool = False) -> dict:
    """Summary statistics of a CAM classifier kernel.

    Args:
      kernel: (C, K) classifier weights W (numpy or jax array).
      eps: a weight with |w| < eps counts as zero for `sparsity`.
      per_class: also return the sparsity of each class's column.
    Returns:
      dict of Python floats / ints:
        num_weights: C * K.
        sparsity: fraction of weights with |w| < eps.
        num_positive, num_negative: weights with w > 0 / w < 0 (exact zeros
          are in neither).
        negative_mass_share: sum of |w| over w < 0 divided by sum of |w|;
          NaN when every weight is exactly 0 (no mass to share).
        mean_abs: mean |w|.
        l1: sum |w|; l2: sqrt(sum w^2) (the Frobenius norm).
        per_class_sparsity: (K,) float64 array, only with per_class=True.
    """
    w = _kernel(kernel)
    eps = _check_eps(eps)
    absolute = np.abs(w)
    l1 = float(np.sum(absolute))
    negative_mass = float(np.sum(absolute[w < 0]))
    stats = {
        'num_weights': int(w.size),
        'sparsity': float(np.mean(absolute < eps)),
        'num_positive': int(np.sum(w > 0)),
        'num_negative': int(np.sum(w < 0)),
        'negative_mass_share': negative_mass / l1 if l1 > 0 else math.nan,
        'mean_abs': float(np.mean(absolute)),
        'l1': l1,
        'l2': float(np.sqrt(np.sum(w * w))),
    }
    if per_class:
        stats['per_class_sparsity'] = np.mean(absolute < eps, axis=0)
    return stats


# =============================================================================
# Plots
# =============================================================================
def _new_figure(figsize):
    # Imported here: the statistics above should not pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig




def _colours(n: int) -> list:
    from matplotlib import colormaps
    cmap = colormaps['tab10' if n <= 10 else 'tab20']
    return [cmap(i % cmap.N) for i in range(n)]


def histogram_bins(kernels: Mapping[str, object], *, bins: int = 60) -> np.ndarray:
    """(bins + 1,) linear edges over [0, max |w|] of every run: the one set of
    bins `weight_histogram_png` uses for both panels and every run, so bar
    heights are comparable."""
    if bins < 1:
        raise ValueError(f'bins must be >= 1, got {bins}')
    top = max(float(np.max(np.abs(_kernel(k)))) for k in kernels.values())
    return np.linspace(0.0, top if top > 0 else 1.0, bins + 1)


def weight_histogram_png(kernels: Mapping[str, object], *, bins: int | Sequence[float] = 60,
                         eps: float = 1e-3, path=None, title: str | None = None) -> bytes:
    """Histograms of classifier weights, positive and negative apart, runs
    overlaid.

    Left panel: the positive weights w > 0; right panel: |w| of the negative
    weights w < 0. Both panels share the bins and the y range, with a log
    count axis so the near-zero spike of an L1 run and the thin tails stay
    readable together. Each run is a step outline in its own colour; the
    legend gives its sparsity and negative mass share (`weight_stats`), and
    a dashed line marks eps. Exact zeros are in neither panel.

    Args:
      kernels: {run name: (C, K) kernel}, e.g. {'none': ..., 'L1': ...,
        'L2': ...}, in legend order. Runs may have different shapes.
      bins: number of linear bins over [0, max |w| of all runs], or the edges.
      eps: sparsity threshold, as in `weight_stats`.
      path: optional file to write the PNG to.
      title: figure title; default none.
    Returns:
      The PNG bytes (1200 x 450 pixels).
    """
    if not kernels:
        raise ValueError('kernels is empty')
    eps = _check_eps(eps)
    edges = (histogram_bins(kernels, bins=bins) if np.ndim(bins) == 0
             else np.asarray(bins, np.float64))
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError('bins must be a positive count or increasing edges')

    fig = _new_figure((12.0, 4.5))
    ax_pos, ax_neg = fig.subplots(1, 2, sharex=True, sharey=True)
    colours = _colours(len(kernels))
    for (name, kernel), colour in zip(kernels.items(), colours, strict=True):
        w = _kernel(kernel)
        stats = weight_stats(w, eps=eps)
        share = stats['negative_mass_share']
        label = (f'{name} (sparsity {100 * stats["sparsity"]:.1f}%, '
                 f'neg. mass {"n/a" if math.isnan(share) else f"{100 * share:.1f}%"})')
        ax_pos.hist(w[w > 0], bins=edges, histtype='step', color=colour, linewidth=1.5,
                    label=label)
        ax_neg.hist(-w[w < 0], bins=edges, histtype='step', color=colour, linewidth=1.5)
    panels = ((ax_pos, 'positive weights  w > 0'), (ax_neg, 'negative weights  |w|, w < 0'))
    for ax, which in panels:
        ax.set_yscale('log', nonpositive='clip')
        ax.axvline(eps, color='grey', linestyle='--', linewidth=0.8)
        ax.set_title(which, fontsize=10)
        ax.set_xlabel('|w|')
        ax.set_xlim(edges[0], edges[-1])
    ax_pos.set_ylabel('count (log)')
    ax_pos.legend(fontsize=8, loc='upper right', title=f'dashed: eps = {eps:g}',
                  title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return figure_png(fig, path=path, tight_layout=True)


def accuracy_vs_sparsity_png(points: Sequence[Mapping], *, path=None,
                             title: str | None = None) -> bytes:
    """Classification and localization accuracy against weight sparsity,
    one point per run per metric, each annotated with the run's name.

    Args:
      points: dicts {'name': str, 'sparsity': fraction in [0, 1] (e.g.
        `weight_stats(W)['sparsity']`), 'accuracy': fraction, 'loc_accuracy':
        fraction or None (or absent) for runs without a localization eval}.
      path: optional file to write the PNG to.
      title: default 'accuracy vs classifier weight sparsity'.
    Returns:
      The PNG bytes (700 x 500 pixels); axes in percent.
    """
    if not points:
        raise ValueError('points is empty')
    names = [str(p['name']) for p in points]
    sparsity = np.array([float(p['sparsity']) for p in points])
    accuracy = np.array([float(p['accuracy']) for p in points])
    loc = np.array([math.nan if p.get('loc_accuracy') is None else float(p['loc_accuracy'])
                    for p in points])

    fig = _new_figure((7.0, 5.0))
    ax = fig.add_subplot()
    series = [('classification', accuracy, 'o', '#2471a3'),
              ('localization', loc, 's', '#c0392b')]
    for label, values, marker, colour in series:
        has = ~np.isnan(values)
        if not np.any(has):
            continue
        ax.scatter(100 * sparsity[has], 100 * values[has], marker=marker, color=colour,
                   s=40, label=label, zorder=3)
        # Labels alternate above and below the points in order of sparsity,
        # so two runs with nearly the same sparsity do not print over each other.
        order = np.argsort(sparsity[has], kind='stable')
        for rank, i in enumerate(order):
            ax.annotate(np.array(names)[has][i], (100 * sparsity[has][i], 100 * values[has][i]),
                        xytext=(4, 4 if rank % 2 == 0 else -11), textcoords='offset points',
                        fontsize=8, color=colour)
    ax.set_xlabel('classifier weight sparsity (%)')
    ax.set_ylabel('accuracy (%)')
    ax.margins(x=0.12, y=0.12)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc='best')
    ax.set_title('accuracy vs classifier weight sparsity' if title is None else title,
                 fontsize=10)
    return figure_png(fig, path=path, tight_layout=True)


def class_weight_images_png(kernel, *, image_size: int, class_names: Sequence[str],
                            title: str | None = None) -> bytes:
    """Softmax regression's weights as images (the course notes' weight
    visualization): class k's column W[:, k] of a linear model on
    (image_size, image_size, 3) inputs, reshaped to the image and min-max
    scaled per class to [0, 1], so each tile shows the pattern its class's
    score rewards (bright) and penalizes (dark)."""
    w = _kernel(kernel)
    if w.shape[0] != image_size * image_size * 3:
        raise ValueError(f'a (D, K) kernel with D = {image_size}x{image_size}x3 is needed, '
                         f'got {w.shape}')
    count = w.shape[1]
    columns = min(count, 10)
    rows = -(-count // columns)
    fig = _new_figure((1.3 * columns, 1.5 * rows + (0.4 if title else 0)))
    for k in range(count):
        tile = w[:, k].reshape(image_size, image_size, 3)
        low, high = tile.min(), tile.max()
        tile = (tile - low) / (high - low) if high > low else np.zeros_like(tile)
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(tile, interpolation='nearest')
        ax.set_title(str(class_names[k])[:12], fontsize=8)
        ax.axis('off')
    if title:
        fig.suptitle(title, fontsize=10)
    return figure_png(fig, tight_layout=True)
