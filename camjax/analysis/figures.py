"""Matplotlib figures to PNG bytes, the one way every analysis plot is saved."""

import io
import math

from etils import epath


def figure_png(figure, *, path=None, tight_layout=False, **savefig_kwargs) -> bytes:
    """PNG bytes of a `matplotlib.figure.Figure` (never pyplot), also written
    to `path` when given, laid out by `Figure.tight_layout` first when asked.
    `savefig_kwargs` go to `Figure.savefig`.

    Every text is drawn literally: class and run names come from data, and a
    name such as `$x_` would otherwise be parsed as mathtext and fail. So log
    axes get plain tick labels ('0.01', '1000'), not matplotlib's mathtext
    ones, which would show as '$\\mathdefault{10^{-2}}$', and a log axis
    spanning less than a decade labels its minor ticks ('5', '6', ...)."""
    from matplotlib.text import Text
    from matplotlib.ticker import FuncFormatter, NullFormatter
    plain = FuncFormatter(lambda value, _: f'{value:g}')
    for ax in figure.axes:
        for axis, scale, limits in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                                    (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
            if scale in ('log', 'symlog'):
                axis.set_major_formatter(plain)
                axis.set_minor_formatter(plain if _within_one_decade(scale, limits)
                                         else NullFormatter())
    for text in figure.findobj(Text):
        text.set_parse_math(False)
    if tight_layout:  # measures the texts, so only after the line above
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', **savefig_kwargs)
    png = buffer.getvalue()
    if path is not None:
        epath.Path(path).write_bytes(png)
    return png


def _within_one_decade(scale: str, limits) -> bool:
    """No power of 10 inside the log axis' view: no major tick would be
    labelled, so the minor ticks (2x, 3x, ...) carry the labels."""
    low, high = sorted(limits)
    return (scale == 'log' and low > 0
            and math.ceil(math.log10(low)) > math.floor(math.log10(high)))
