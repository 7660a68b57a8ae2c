"""Train and validation curves from runs' metrics.jsonl records."""


from camjax.analysis.figures import figure_png


def curves_png(records: dict[str, list[dict]]) -> bytes:
    """Two panels, runs overlaid: training loss (train windows) and validation
    / test accuracy (evals) against step. `records`: {run: read_records(...)}."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(10, 3.8))
    loss_ax, acc_ax = figure.subplots(1, 2)
    for index, (name, recs) in enumerate(records.items()):
        colour = f'C{index % 10}'
        train = [r for r in recs if r['kind'] == 'train']
        evals = [r for r in recs if r['kind'] == 'eval']
        loss_ax.plot([r['step'] for r in train], [r['loss'] for r in train], color=colour,
                     label=name)
        for split, style in (('val', '-'), ('test', ':')):
            points = [(r['step'], r[split]['accuracy']) for r in evals if split in r]
            if points:
                acc_ax.plot(*zip(*points, strict=True), style, color=colour, marker='o', ms=3,
                            label=f'{name} {split}')
    loss_ax.set(xlabel='step', ylabel='training loss', title='Training loss')
    acc_ax.set(xlabel='step', ylabel='accuracy', title='Validation (solid) and test (dotted)')
    for ax in (loss_ax, acc_ax):
        if ax.lines:
            ax.legend(fontsize=7)
    return figure_png(figure, dpi=100, bbox_inches='tight')
