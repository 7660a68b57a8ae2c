"""Per-class effects of a treatment (e.g. a regularizer) against a baseline.

A gain in mean accuracy can hide classes that got worse. Both runs classify
the same test images, so every image is a matched pair, and the test for one
class is the exact McNemar test on its discordant pairs (McNemar 1947; the
exact form is a two-sided binomial test on b and c). Running one test per
class needs a multiple-comparison correction: Holm (1979) by default, which
controls the family-wise error rate, or Benjamini-Hochberg (1995), which
controls the false discovery rate.

Everything here is host-side numpy. scipy is only a test dependency, so the
exact binomial test is implemented here in log space and checked against
`scipy.stats.binomtest` in tests/test_per_class.py.
"""

import dataclasses
import math
import operator
from collections.abc import Sequence

import numpy as np

from camjax.analysis.figures import figure_png

# scipy.stats.binomtest counts an outcome as "as extreme as k" when its
# probability is <= P(k) * (1 + 1e-7); without the slack, rounding decides
# whether the mirror-image outcome of a symmetric distribution is included.
_RELATIVE_TOLERANCE = 1 + 1e-7
_LOG_RELATIVE_TOLERANCE = math.log(_RELATIVE_TOLERANCE)

# Largest (rows x outcomes) grid that mcnemar_exact_p builds at once; bounds
# memory when one call tests thousands of classes or one very large n.
_GRID_ELEMENTS = 1 << 22

CORRECTIONS = ('holm', 'bh', 'none')


# =============================================================================
# Exact tests
# =============================================================================
def _count(value, name: str) -> int:
    value = operator.index(value)
    if value < 0:
        raise ValueError(f'{name} must be >= 0, got {value}')
    return value


def _log_factorials(n: int) -> np.ndarray:
    """(n + 1,) log(x!) for x = 0..n. math.lgamma is accurate to a few ulp at
    every x; a running sum of logs would drift by ~sqrt(n) roundings."""
    return np.fromiter((math.lgamma(x + 1.0) for x in range(n + 1)), np.float64, n + 1)


def _logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide='ignore'):
        return np.log(np.sum(np.exp(a - top), axis=axis)) + np.squeeze(top, axis=axis)


def binomial_two_sided_p(*, k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test p-value for k successes in n trials.

    Same definition as `scipy.stats.binomtest(k, n, p).pvalue`: the total
    probability of every outcome no more likely than k (within a relative
    tolerance of 1e-7), where outcomes on k's side of the mode count in full
    and those on the other side only if their probability is that small.
    Probabilities are summed in log space (log-gamma), so n = 1e5 and tiny
    p-values are fine; a p-value below ~1e-308 underflows to 0.0.

    Args:
      k: successes, 0 <= k <= n.
      n: trials. n = 0 returns 1.0 (no evidence); scipy rejects n = 0.
      p: success probability under the null, in [0, 1].
    Returns:
      The p-value, a float in [0, 1].
    """
    k, n = _count(k, 'k'), _count(n, 'n')
    if k > n:
        raise ValueError(f'k ({k}) must not be greater than n ({n})')
    if not 0.0 <= p <= 1.0:
        raise ValueError(f'p ({p}) must be in [0, 1]')
    if n == 0 or k == p * n:
        return 1.0
    if p in (0.0, 1.0):
        # A point mass at 0 or n, and k is elsewhere: k is impossible.
        return 0.0
    x = np.arange(n + 1)
    log_f = _log_factorials(n)
    log_pmf = log_f[n] - log_f - log_f[::-1] + x * math.log(p) + (n - x) * math.log1p(-p)
    as_rare = log_pmf <= log_pmf[k] + _LOG_RELATIVE_TOLERANCE
    # The pmf is unimodal: k's own tail is included whole; scipy searches the
    # other tail starting at ceil(pn) (k below the mean) or floor(pn) (above).
    if k < p * n:
        tails = (x <= k) | ((x >= math.ceil(p * n)) & as_rare)
    else:
        tails = (x >= k) | ((x <= math.floor(p * n)) & as_rare)
    return min(1.0, float(np.exp(_logsumexp(log_pmf[tails]))))


def mcnemar_exact_p(*, b, c):
    """Exact McNemar test of paired binary outcomes (McNemar 1947).

    Under the null both runs are equally likely to win a discordant pair, so
    b ~ Binomial(b + c, 1/2) and the p-value is
    `binomial_two_sided_p(k=b, n=b + c, p=0.5)`. For p = 1/2 the pmf is
    symmetric, which reduces that to min(1, 2 P(X <= min(b, c))) (and 1 when
    b == c), computed here for every element at once.

    Args:
      b: int or int array: pairs the baseline got right and the treated run
        got wrong.
      c: int or int array, broadcastable with b: pairs the baseline got
        wrong and the treated run got right.
    Returns:
      A float for scalar inputs, else a float64 array of the broadcast shape.
      p = 1 where b + c = 0 (no discordant pairs, no evidence).
    """
    b_arr, c_arr = np.broadcast_arrays(np.asarray(b), np.asarray(c))
    for name, arr in (('b', b_arr), ('c', c_arr)):
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 0)):
            raise ValueError(f'{name} must hold non-negative integers')
    b_arr, c_arr = b_arr.astype(np.int64).ravel(), c_arr.astype(np.int64).ravel()
    out = np.ones(b_arr.shape, np.float64)
    todo = np.flatnonzero(b_arr != c_arr)
    if todo.size:
        n = (b_arr + c_arr)[todo]
        m = np.minimum(b_arr, c_arr)[todo]
        log_f = _log_factorials(int(n.max()))
        width = int(m.max()) + 1
        rows = max(1, _GRID_ELEMENTS // width)
        x = np.arange(width)[None, :]
        for start in range(0, todo.size, rows):
            nn, mm = n[start:start + rows, None], m[start:start + rows, None]
            xx = np.minimum(x, mm)  # m < n / 2, so every index stays in range
            log_pmf = log_f[nn] - log_f[xx] - log_f[nn - xx] - nn * math.log(2.0)
            log_cdf = _logsumexp(np.where(x <= mm, log_pmf, -np.inf))
            out[todo[start:start + rows]] = np.minimum(1.0, 2.0 * np.exp(log_cdf))
    if np.ndim(b) == 0 and np.ndim(c) == 0:
        return float(out[0])
    return out.reshape(np.broadcast_shapes(np.shape(b), np.shape(c)))


def adjust_p_values(p, *, method: str = 'holm') -> np.ndarray:
    """Multiple-comparison adjusted p-values (statsmodels `multipletests`
    definitions), monotone in the raw p-values and clipped to 1.

    holm: Holm (1979) step-down; with p_(1) <= ... <= p_(m),
      adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). Controls the
      family-wise error rate.
    bh: Benjamini & Hochberg (1995) step-up;
      adj_(i) = min_{j >= i} min(1, m p_(j) / j). Controls the false
      discovery rate.
    none: the raw p-values.

    Args:
      p: array of p-values in [0, 1], any shape. NaN entries (untested
        hypotheses) stay NaN and do not count towards m.
      method: 'holm', 'bh' or 'none'.
    Returns:
      float64 array of p's shape.
    """
    if method not in CORRECTIONS:
        raise ValueError(f'method must be one of {CORRECTIONS}, got {method!r}')
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    raw = p[tested]
    if np.any((raw < 0) | (raw > 1)):
        raise ValueError('p-values must lie in [0, 1]')
    m = raw.size
    order = np.argsort(raw, kind='stable')
    ranked = raw[order]
    if method == 'holm':
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == 'bh':
        adjusted = np.minimum.accumulate((m / np.arange(m, 0, -1)) * ranked[::-1])[::-1]
    else:
        adjusted = ranked
    result = np.empty(m)
    result[order] = np.minimum(adjusted, 1.0)
    out[tested] = result
    return out


# =============================================================================
# Paired per-class comparison
# =============================================================================
@dataclasses.dataclass(frozen=True, eq=False)
class PerClassComparison:
    """Per-class effects of a treated run against a baseline on one test set.

    Every array is (K,), indexed by class. A class with no test images has
    count 0, NaN accuracies / delta / p-values, significant False and
    direction ''; it is left out of the correction and of every summary.

    Attributes:
      class_names: K names.
      count: test images per class.
      baseline_accuracy, treated_accuracy: fraction of the class's images
        classified correctly; delta = treated - baseline.
      b: images the baseline got right and the treated run got wrong.
      c: images the baseline got wrong and the treated run got right
        (delta = (c - b) / count).
      p_value: exact McNemar p-value; p_adjusted: after `correction`.
      significant: p_adjusted <= alpha (the statsmodels `reject` rule).
      direction: 'better' (c > b), 'worse' (b > c) or 'same', whether or not
        significant.
      summary: see `compare_per_class`.
    """
    class_names: tuple[str, ...]
    count: np.ndarray
    baseline_accuracy: np.ndarray
    treated_accuracy: np.ndarray
    delta: np.ndarray
    b: np.ndarray
    c: np.ndarray
    p_value: np.ndarray
    p_adjusted: np.ndarray
    significant: np.ndarray
    direction: tuple[str, ...]
    alpha: float
    correction: str
    summary: dict

    @property
    def headline(self) -> str:
        return self.summary['headline']

    def to_dict(self) -> dict:
        """JSON-ready: {'alpha', 'correction', 'summary', 'classes': [...]},
        NaN written as None."""
        def num(v):
            v = float(v)
            return None if math.isnan(v) else v
        classes = [
            {'class': name, 'count': int(self.count[i]),
             'baseline_accuracy': num(self.baseline_accuracy[i]),
             'treated_accuracy': num(self.treated_accuracy[i]), 'delta': num(self.delta[i]),
             'b': int(self.b[i]), 'c': int(self.c[i]), 'p_value': num(self.p_value[i]),
             'p_adjusted': num(self.p_adjusted[i]), 'significant': bool(self.significant[i]),
             'direction': self.direction[i]}
            for i, name in enumerate(self.class_names)]
        return {'alpha': self.alpha, 'correction': self.correction,
                'summary': dict(self.summary), 'classes': classes}


def _int_vector(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f'{name} must be a 1-D integer array, got {x.dtype} {x.shape}')
    return x


def _headline(*, delta: float, num_worse: int, worst_baseline: float,
              worst_treated: float) -> str:
    classes = 'class' if num_worse == 1 else 'classes'
    but = 'but' if delta > 0 and num_worse else 'and'  # a rising mean hiding worse classes
    return (f'mean {100 * delta:+.1f}, {but} {num_worse} {classes} significantly worse, '
            f'worst class {100 * worst_baseline:.1f} -> {100 * worst_treated:.1f}')


def compare_per_class(*, labels, baseline_pred, treated_pred, num_classes: int,
                      class_names: Sequence[str] | None = None, alpha: float = 0.05,
                      correction: str = 'holm') -> PerClassComparison:
    """Paired per-class comparison of two runs' predictions on the same images.

    Args:
      labels: (N,) int ground-truth classes in [0, num_classes).
      baseline_pred: (N,) int top-1 predictions of the baseline, image i
        aligned with labels[i].
      treated_pred: (N,) int top-1 predictions of the treated run, same images
        in the same order.
      num_classes: K.
      class_names: K names; default '0', '1', ...
      alpha: significance level applied to the adjusted p-values.
      correction: 'holm' (family-wise error), 'bh' (false discovery rate) or
        'none'; applied across the classes that have test images.
    Returns:
      A PerClassComparison. Its `summary` dict holds:
        num_images, num_classes, num_classes_tested (classes with images);
        baseline_accuracy, treated_accuracy, delta: mean over images;
        baseline_mean_class_accuracy, treated_mean_class_accuracy,
          delta_mean_class_accuracy: mean over classes of per-class accuracy;
        baseline_class_accuracy_std, treated_class_accuracy_std: population
          std (ddof=0) of per-class accuracy;
        num_better, num_worse, num_same: classes by the raw sign of delta;
        num_significantly_better, num_significantly_worse;
        baseline_worst_class_accuracy / baseline_worst_class and
          treated_worst_class_accuracy / treated_worst_class: the minimum of
          per-class accuracy in each run on its own (the two can be different
          classes: the question is how bad the worst class is, not how one
          class moved), first class on ties;
        mcnemar_b, mcnemar_c, mcnemar_p: exact McNemar test over all images;
        headline: 'mean +X.X, but N classes significantly worse, worst class
          A -> B' in percent points with one decimal ('1 class' when N = 1;
          'and' instead of 'but' when the mean did not rise or no class is
          significantly worse).
    """
    labels = _int_vector(labels, 'labels')
    baseline_pred = _int_vector(baseline_pred, 'baseline_pred')
    treated_pred = _int_vector(treated_pred, 'treated_pred')
    if not labels.shape == baseline_pred.shape == treated_pred.shape:
        raise ValueError(f'labels {labels.shape}, baseline_pred {baseline_pred.shape} and '
                         f'treated_pred {treated_pred.shape} must have the same shape')
    if labels.size == 0:
        raise ValueError('labels is empty')
    if num_classes < 1 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f'labels must lie in [0, num_classes={num_classes})')
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    class_names = tuple(str(name) for name in class_names)
    if len(class_names) != num_classes:
        raise ValueError(f'{len(class_names)} class_names for {num_classes} classes')
    if not 0.0 < alpha < 1.0:
        raise ValueError(f'alpha must be in (0, 1), got {alpha}')
    if correction not in CORRECTIONS:
        raise ValueError(f'correction must be one of {CORRECTIONS}, got {correction!r}')

    base_right = baseline_pred == labels
    treated_right = treated_pred == labels
    count = np.bincount(labels, minlength=num_classes)
    b = np.bincount(labels[base_right & ~treated_right], minlength=num_classes)
    c = np.bincount(labels[~base_right & treated_right], minlength=num_classes)
    tested = count > 0
    with np.errstate(invalid='ignore', divide='ignore'):
        base_acc = np.bincount(labels, weights=base_right, minlength=num_classes) / count
        treated_acc = np.bincount(labels, weights=treated_right, minlength=num_classes) / count
    delta = treated_acc - base_acc
    p_value = np.where(tested, mcnemar_exact_p(b=b, c=c), np.nan)
    p_adjusted = adjust_p_values(p_value, method=correction)
    significant = tested & (np.nan_to_num(p_adjusted, nan=1.0) <= alpha)
    # Integer counts, not the float delta, decide the sign: delta = (c - b) / count.
    better, worse = tested & (c > b), tested & (b > c)
    direction = tuple('' if not t else 'better' if bt else 'worse' if w else 'same'
                      for t, bt, w in zip(tested, better, worse, strict=True))

    base_tested, treated_tested = base_acc[tested], treated_acc[tested]
    names_tested = [name for name, t in zip(class_names, tested, strict=True) if t]
    worst_base = int(np.argmin(base_tested))
    worst_treated = int(np.argmin(treated_tested))
    total_b = int(np.sum(base_right & ~treated_right))
    total_c = int(np.sum(~base_right & treated_right))
    mean_delta = float(np.mean(treated_right) - np.mean(base_right))
    num_significantly_worse = int(np.sum(significant & worse))
    summary = {
        'num_images': int(labels.size),
        'num_classes': int(num_classes),
        'num_classes_tested': int(np.sum(tested)),
        'baseline_accuracy': float(np.mean(base_right)),
        'treated_accuracy': float(np.mean(treated_right)),
        'delta': mean_delta,
        'baseline_mean_class_accuracy': float(np.mean(base_tested)),
        'treated_mean_class_accuracy': float(np.mean(treated_tested)),
        'delta_mean_class_accuracy': float(np.mean(treated_tested) - np.mean(base_tested)),
        'baseline_class_accuracy_std': float(np.std(base_tested)),
        'treated_class_accuracy_std': float(np.std(treated_tested)),
        'num_better': int(np.sum(better)),
        'num_worse': int(np.sum(worse)),
        'num_same': int(np.sum(tested & (b == c))),
        'num_significantly_better': int(np.sum(significant & better)),
        'num_significantly_worse': num_significantly_worse,
        'baseline_worst_class_accuracy': float(base_tested[worst_base]),
        'baseline_worst_class': names_tested[worst_base],
        'treated_worst_class_accuracy': float(treated_tested[worst_treated]),
        'treated_worst_class': names_tested[worst_treated],
        'mcnemar_b': total_b,
        'mcnemar_c': total_c,
        'mcnemar_p': mcnemar_exact_p(b=total_b, c=total_c),
    }
    summary['headline'] = _headline(
        delta=mean_delta, num_worse=num_significantly_worse,
        worst_baseline=summary['baseline_worst_class_accuracy'],
        worst_treated=summary['treated_worst_class_accuracy'])
    return PerClassComparison(
        class_names=class_names, count=count, baseline_accuracy=base_acc,
        treated_accuracy=treated_acc, delta=delta, b=b, c=c, p_value=p_value,
        p_adjusted=p_adjusted, significant=significant, direction=direction,
        alpha=float(alpha), correction=correction, summary=summary)


# =============================================================================
# Reporting
# =============================================================================
TABLE_COLUMNS = ('class', 'n', 'base', 'treated', 'delta', 'b', 'c', 'p', 'p_adj', 'sig')


def _sort_order(result: PerClassComparison, order: str) -> np.ndarray:
    if order == 'class':
        return np.arange(len(result.class_names))
    if order == 'delta':
        # Most harmed first; classes without images (NaN) last.
        return np.argsort(np.nan_to_num(result.delta, nan=np.inf), kind='stable')
    raise ValueError(f"order must be 'delta' or 'class', got {order!r}")


def per_class_table_rows(result: PerClassComparison, *, order: str = 'delta') -> list[dict]:
    """Rows of formatted strings, one per class, keyed by TABLE_COLUMNS.

    base / treated are percent with one decimal, delta is signed percent
    points, p and p_adj have 3 significant digits, sig is '*' when
    significant. A class without test images has empty cells.

    Args:
      result: from compare_per_class.
      order: 'delta' (most harmed class first) or 'class' (class index).
    Returns:
      list of K dicts {column: str}.
    """
    def pct(v, fmt):
        return '' if math.isnan(v) else format(100 * v, fmt)

    def pval(v):
        return '' if math.isnan(v) else f'{v:.3g}'

    rows = []
    for i in _sort_order(result, order):
        rows.append({
            'class': result.class_names[i], 'n': str(int(result.count[i])),
            'base': pct(result.baseline_accuracy[i], '.1f'),
            'treated': pct(result.treated_accuracy[i], '.1f'),
            'delta': pct(result.delta[i], '+.1f'),
            'b': str(int(result.b[i])), 'c': str(int(result.c[i])),
            'p': pval(result.p_value[i]), 'p_adj': pval(result.p_adjusted[i]),
            'sig': '*' if result.significant[i] else ''})
    return rows


def per_class_markdown(result: PerClassComparison, *, order: str = 'delta') -> str:
    """The headline, then a markdown table of `per_class_table_rows`."""
    rows = per_class_table_rows(result, order=order)
    lines = [result.headline, '', '| ' + ' | '.join(TABLE_COLUMNS) + ' |',
             '|' + '---|' * len(TABLE_COLUMNS)]
    lines += ['| ' + ' | '.join(row[col] for col in TABLE_COLUMNS) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


_WORSE_COLOUR, _BETTER_COLOUR, _PLAIN_COLOUR = '#c0392b', '#2471a3', '#b0b0b0'


def plot_per_class_deltas(result: PerClassComparison, *, path=None, ax=None,
                          title: str | None = None, max_tick_labels: int = 40) -> bytes:
    """Bar plot of per-class accuracy change, sorted, significant bars marked.

    Bars are treated - baseline accuracy in percent points, most harmed class
    on the left. Significantly worse bars are red, significantly better blue,
    the rest grey, and every significant bar carries an asterisk. Classes
    without test images are left out.

    Args:
      result: from compare_per_class.
      path: optional file to write the PNG to.
      ax: optional matplotlib Axes to draw on; the PNG is then of its figure.
        Without it a new `matplotlib.figure.Figure` on an Agg canvas is used,
        never pyplot, so nothing global (backend, current figure) changes.
      title: default is the headline.
      max_tick_labels: class names label the x axis up to this many classes.
    Returns:
      The PNG bytes.
    """
    # Imported here: the tests and tables above should not pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tested = np.flatnonzero(result.count > 0)
    order = tested[np.argsort(result.delta[tested], kind='stable')]
    deltas = 100 * result.delta[order]
    significant = result.significant[order]
    worse = np.array([result.direction[i] == 'worse' for i in order], bool)
    colours = np.where(significant & worse, _WORSE_COLOUR,
                       np.where(significant, _BETTER_COLOUR, _PLAIN_COLOUR))
    if ax is None:
        fig = Figure(figsize=(min(20.0, max(6.0, 2.0 + 0.25 * len(order))), 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    x = np.arange(len(order))
    ax.bar(x, deltas, color=colours, width=0.8)
    for xi, d in zip(x[significant], deltas[significant], strict=True):
        ax.annotate('*', (xi, d), xytext=(0, 1 if d >= 0 else -1), textcoords='offset points',
                    ha='center', va='bottom' if d >= 0 else 'top', fontsize=12)
    ax.axhline(0.0, color='black', linewidth=0.8)
    ax.set_xlim(-0.6, max(len(order), 1) - 0.4)
    ax.margins(y=0.12)
    if len(order) <= max_tick_labels:
        ax.set_xticks(x, [result.class_names[i] for i in order], rotation=90, fontsize=8)
    else:
        ax.set_xticks([])
    ax.set_xlabel('class (sorted by change)')
    ax.set_ylabel('treated - baseline accuracy (pp)')
    ax.set_title(result.headline if title is None else title, fontsize=10)
    label = f'significant ({result.correction}, alpha={result.alpha:g})'
    ax.legend(handles=[Patch(color=_WORSE_COLOUR, label=f'worse, {label}'),
                       Patch(color=_BETTER_COLOUR, label=f'better, {label}'),
                       Patch(color=_PLAIN_COLOUR, label='not significant')],
              fontsize=8, loc='best')
    return figure_png(fig, path=path, tight_layout=True)
