"""The LinR sweet-point sweep's table, figures and sweet point (LinR paper,
Sec. 4.8, Figs. 4 and 5). Pure functions over the per-round eval records of
`camjax.training.refine.sweep`, plus `write`, which puts them in the workdir.

A row is one refined starting checkpoint:
  {'step', 'epoch', 'baseline': {'train', 'val', 'test'},
   'rounds': [{'round', 'train', 'val', 'test'}, ...]}     (accuracies)
"""


from camjax.analysis.figures import figure_png
from camjax.rundir import RunDir

SPLITS = ('train', 'val', 'test')


def row_from_records(records: list[dict], *, step: int, epoch: float | None) -> dict:
    """One row from a refine run's metrics.jsonl records (round 0 = baseline)."""
    by_round = {}
    for record in records:
        if record['kind'] == 'eval' and 'round' in record:
            by_round[record['round']] = {s: record[s]['accuracy'] for s in SPLITS
                                         if s in record}
    if 0 not in by_round:
        raise ValueError(f'no baseline (round 0) eval in the records of step {step}')
    rounds = [{'round': r, **by_round[r]} for r in sorted(by_round) if r > 0]
    return {'step': step, 'epoch': epoch, 'baseline': by_round[0], 'rounds': rounds}


def sweet_point(rows: list[dict], split: str = 'test'):
    """The first starting checkpoint from which on every refined round beats
    its own baseline on `split`, for it and every later checkpoint: its row's
    epoch (or step, when the epoch is unknown), or None if there is none."""
    rows = sorted(rows, key=lambda r: r['step'])
    beats = [bool(r['rounds']) and all(x[split] > r['baseline'][split] for x in r['rounds'])
             for r in rows]
    for i, row in enumerate(rows):
        if all(beats[i:]):
            return row['epoch'] if row['epoch'] is not None else row['step']
    return None


def markdown_table(rows: list[dict]) -> str:
    rounds = max((len(r['rounds']) for r in rows), default=0)
    header = (['epoch', 'step', 'base train', 'base test']
              + [f'r{i} {s}' for i in range(1, rounds + 1) for s in ('train', 'test')])
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in sorted(rows, key=lambda r: r['step']):
        epoch = '' if row['epoch'] is None else f'{row["epoch"]:g}'
        cells = [epoch, str(row['step']), _pct(row['baseline'].get('train')),
                 _pct(row['baseline'].get('test'))]
        for x in row['rounds']:
            cells += [_pct(x.get('train')), _pct(x.get('test'))]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _pct(value) -> str:
    return '' if value is None else f'{100 * value:.2f}'


def _png(figure) -> bytes:
    return figure_png(figure, dpi=110, bbox_inches='tight')


def scatter_figure(rows: list[dict]) -> bytes:
    """Fig. 4: train vs test accuracy, baseline (blue) and refined rounds (orange)."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(5, 4))
    ax = figure.add_subplot()
    refined = [x for r in rows for x in r['rounds'] if 'train' in x]
    ax.scatter([100 * x['train'] for x in refined], [100 * x['test'] for x in refined],
               c='tab:orange', s=14, label='LinRNL-refined rounds')
    ax.scatter([100 * r['baseline']['train'] for r in rows],
               [100 * r['baseline']['test'] for r in rows], c='tab:blue', s=18,
               label='baseline checkpoints')
    ax.set(xlabel='train accuracy (%)', ylabel='test accuracy (%)',
           title='Refined vs baseline (LinR paper, Fig. 4)')
    ax.legend(loc='lower right', fontsize=8)
    return _png(figure)


def rounds_figure(rows: list[dict]) -> bytes:
    """Fig. 5: test accuracy against round (0 = baseline) per starting epoch."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(5, 4))
    ax = figure.add_subplot()
    for row in sorted(rows, key=lambda r: r['step']):
        xs = [0] + [x['round'] for x in row['rounds']]
        ys = [100 * row['baseline']['test']] + [100 * x['test'] for x in row['rounds']]
        name = f'epoch {row["epoch"]:g}' if row['epoch'] is not None else f'step {row["step"]}'
        ax.plot(xs, ys, marker='o', ms=3, label=name)
    ax.set(xlabel='LinRNL round', ylabel='test accuracy (%)',
           title='Accuracy per round (LinR paper, Fig. 5)')
    ax.legend(fontsize=7, ncol=2)
    return _png(figure)


def write(workdir: str, rows: list[dict]) -> dict:
    """Write sweep.json, sweep.md, sweep_scatter.png and sweep_rounds.png;
    returns the summary {'rows', 'sweet_point'}."""
    summary = {'rows': sorted(rows, key=lambda r: r['step']), 'sweet_point': sweet_point(rows)}
    rundir = RunDir(workdir)
    rundir.write_json('sweep.json', summary)
    point = summary['sweet_point']
    verdict = (f'sweet point: epoch {point:g} (from here on every refined round beats its '
               'baseline test accuracy)' if point is not None else
               'sweet point: none (no epoch from which every refined round beats its baseline)')
    rundir.write_text('sweep.md', markdown_table(rows) + '\n' + verdict + '\n')
    for name, make in (('sweep_scatter.png', scatter_figure), ('sweep_rounds.png', rounds_figure)):
        rundir.write_bytes(name, make(rows))
    print(verdict, flush=True)
    return summary
