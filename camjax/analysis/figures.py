"""Matplotlib figures to PNG bytes, the one way every analysis plot is saved."""

import io

from etils import epath


def figure_png(figure, *, path=None, tight_layout=False, **savefig_kwargs) -> bytes:
    """PNG bytes of a `matplotlib.figure.Figure` (never pyplot), also written
    to `path` when given, laid out by `Figure.tight_layout` first when asked.
    `savefig_kwargs` go to `Figure.savefig`.

    Every text is drawn literally: class and run names come from data, and a
    name such as `$x_` would otherwise be parsed as mathtext and fail. So log
    axes get plain tick labels ('0.01', '1000'), not matplotlib's mathtext
    ones, which would show as '$\\mathdefault{10^{-2}}$'."""
    from matplotlib.text import Text
    from matplotlib.ticker import FuncFormatter, NullFormatter
    for ax in figure.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale in ('log', 'symlog'):
                axis.set_major_formatter(FuncFormatter(lambda value, _: f'{value:g}'))
                axis.set_minor_formatter(NullFormatter())
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
