"""`--mode=check`: scan a file-based dataset and print one table of what is
there (images per split and class) and of every problem found, rather than
stopping at the first as opening the dataset does.

The checks are the listings' own (folders.py, run with a collecting
`Problems`) plus a full decode of every file with the decode that training
uses (folders.decode_image), on a few threads. A layout problem (a missing
split directory, a CSV without a header) stops the scan and is the table's
one problem. Nothing is written.
"""

import sys

import numpy as np

from camjax.data import folders
from camjax.data.problems import KINDS, DataProblem, Problems
from camjax.data.sources import parse_dataset_name
from camjax.errors import CamjaxError

SHOWN_PER_KIND = 3  # messages listed per kind of problem; the rest are counted


def check_dataset(cfg) -> int:
    """Scans dataset config `cfg`, prints the table to stdout and returns the
    number of problems found (0: the dataset is clean)."""
    kind, arg = parse_dataset_name(cfg.name)
    if kind not in folders.LISTERS:
        print(f'{cfg.name}: nothing to scan; TFDS verified the prepared files when it built '
              'them')
        return 0
    splits = (cfg.train_split, cfg.test_split)
    problems = Problems(collect=True)
    try:
        *listings, class_names, multilabel = folders.LISTERS[kind](arg, cfg, problems)
    except CamjaxError as e:
        print(format_table(cfg.name, splits, [], problems.found, layout_error=str(e)))
        return len(problems.found) + 1
    for split, listing in zip(splits, listings, strict=True):
        print(f'camjax: decoding the {len(listing.files)} {split} images', file=sys.stderr,
              flush=True)
        for problem in folders.map_in_threads(_decode_problem, listing.files):
            if problem is not None:
                problems.add(split, problem)
    counts = [class_counts(listing.labels, len(class_names)) for listing in listings]
    label = 'attribute' if multilabel else 'class'
    rows = [(f'{label} {name}', [int(c[i]) for c in counts]) for i, name in enumerate(class_names)]
    rows.append(('images', [len(listing.files) for listing in listings]))
    print(format_table(cfg.name, splits, rows, problems.found))
    return len(problems.found)


def _decode_problem(path: str) -> DataProblem | None:
    try:
        folders.decode_image(path)
    except DataProblem as problem:
        return problem
    return None


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class; for multi-hot labels, images with each attribute."""
    if labels.ndim == 2:
        return labels.sum(axis=0).astype(np.int64)
    return np.bincount(labels.astype(np.int64), minlength=num_classes)


def format_table(name: str, splits, count_rows, found, *, layout_error: str = '') -> str:
    """The report: `count_rows` [(what, [count per split])], then per kind of
    problem its count per split and the first SHOWN_PER_KIND messages, then a
    total. `found` is Problems.found: [(split, DataProblem)]."""
    rows = [(what, [str(c) for c in counts], []) for what, counts in count_rows]
    if layout_error:
        rows.append(('cannot open', ['-'] * len(splits), [layout_error]))
    for kind in KINDS:
        messages = {split: [str(p) for s, p in found if s == split and p.kind == kind]
                    for split in splits}
        if any(messages.values()):
            shown = [m for split in splits for m in messages[split]]
            more = [f'... and {len(shown) - SHOWN_PER_KIND} more'] if \
                len(shown) > SHOWN_PER_KIND else []
            rows.append((kind, [str(len(messages[s])) for s in splits],
                         shown[:SHOWN_PER_KIND] + more))
    total = len(found) + bool(layout_error)
    rows.append(('problems', [str(sum(s == split for s, _ in found)) for split in splits], []))
    what_width = max(len(r[0]) for r in rows)
    widths = [max([len(split)] + [len(r[1][i]) for r in rows]) for i, split in enumerate(splits)]

    def line(what, cells, detail=''):
        return '  '.join([what.ljust(what_width)] + [c.rjust(w) for c, w in
                                                      zip(cells, widths, strict=True)]
                         + [detail]).rstrip()

    out = [f'camjax data check of {name} (validation is carved from {splits[0]})',
           line('', list(splits), 'details')]
    for what, cells, details in rows:
        out.append(line(what, cells, details[0] if details else ''))
        out += [line('', [''] * len(splits), d) for d in details[1:]]
    out.append(f'{total} problem{"s" if total != 1 else ""} found' if total
               else 'no problems found')
    return '\n'.join(out)
