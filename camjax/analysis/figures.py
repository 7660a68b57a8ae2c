"""Matplotlib figures to PNG bytes, the one way every analysis plot is saved."""

import io


def figure_png(figure, *, path=None, **savefig_kwargs) -> bytes:
    """PNG bytes of a `matplotlib.figure.Figure` (never pyplot), also written
    to `path` when given. `savefig_kwargs` go to `Figure.savefig`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', **savefig_kwargs)
    png = buffer.getvalue()
    if path is not None:
        with open(path, 'wb') as f:
            f.write(png)
    return png
