"""Mode 'analyze': evaluate one or more trained runs (`evaluation.runs`, the
first is the baseline) on the same test images and write what the
regularizers did into this workdir: `analysis.json` and a self-contained
`report.html` with the per-class effects (paired exact McNemar tests, Holm
correction), seed groups (`evaluation.groups`: per-group mean and standard
deviation, paired t-tests over seeds; seeds.py), classifier-weight
histograms and sparsity, CAM grids, the loss landscape on shared directions,
train / validation curves and the configs.
"""

import hashlib
import json
import os
import re

import jax
import numpy as np
from etils import epath

from camjax import parallel
from camjax.analysis import cam_grid, field_sweep, per_class, seeds
from camjax.analysis import weights as weight_analysis
from camjax.analysis.curves import curves_png
from camjax.analysis.report import Report
from camjax.data import eval_batches, normalize_images, open_splits
from camjax.data.transforms import to_rgb
from camjax.errors import CamjaxError
from camjax.evaluation import landscape, localization
from camjax.evaluation import metrics as metrics_lib
from camjax.evaluation.evaluate import (
    RUN_EVALUATION_FIELDS,
    evaluate_run,
    evaluated_checkpoint,
    restore_model,
    run_config,
    summary_line,
)
from camjax.models import CLASSIFIER
from camjax.rundir import RunDir, config_to_dict, read_records
from camjax.training.state import forward

CACHE_DIR = 'cache'
_UNSAFE = re.compile(r'[^A-Za-z0-9_.+-]+')


def _names(workdirs) -> list[str]:
    """Short, unique run names: the workdirs' base names (or full paths).
    For display; a file name made from one goes through `safe_filename`."""
    names = [epath.Path(w).name for w in workdirs]
    return names if len(set(names)) == len(names) else list(workdirs)


def safe_filename(name: str, *, max_length: int = 64) -> str:
    """`name` as one plain file name: itself when it already is one (letters,
    digits, `_.+-`, no leading dot, at most `max_length` characters), else its
    other characters replaced by '_' and a hash of `name` appended, so
    distinct names stay distinct. A run name such as '/abs/run' or
    '../../x' can never place a file outside the directory it is joined to."""
    if not _UNSAFE.search(name) and not name.startswith('.') and 0 < len(name) <= max_length:
        return name
    readable = _UNSAFE.sub('_', name).strip('._')[:max_length] or 'name'
    return f'{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}'


def _cache_name(name: str, workdir: str, evaluation) -> str:
    """cache/<run>-step<S>-<hash>: the hash covers the run's config.json, the
    evaluated checkpoint and the settings `evaluate_run` reads, so a
    retrained run or other settings never hit an old entry."""
    source, step = evaluated_checkpoint(workdir, evaluation.checkpoint)
    settings = {k: evaluation[k] for k in RUN_EVALUATION_FIELDS}
    checkpoint_dir = epath.Path(source).name if source != workdir else '.'  # 'best' or '.'
    key = json.dumps([config_to_dict(run_config(workdir)), checkpoint_dir, settings],
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return os.path.join(CACHE_DIR, f'{safe_filename(name)}-step{step}-{digest}')


def _evaluate_cached(name: str, workdir: str, evaluation, cache: RunDir, mesh) -> dict:
    """`evaluate_run` results of one compared run, from the analysis
    workdir's cache when present. Nothing is written into the run itself."""
    entry = _cache_name(name, workdir, evaluation)
    results_file, outputs_file = os.path.join(entry, 'eval.json'), os.path.join(entry,
                                                                               'outputs.npz')
    if cache.exists(results_file) and cache.exists(outputs_file):
        config = run_config(workdir)
        config.evaluation = evaluation
        splits = open_splits(config.dataset, process_index=jax.process_index(),
                             process_count=jax.process_count())
        model_state = restore_model(config, workdir, num_classes=splits.num_classes,
                                    which=evaluation.checkpoint, mesh=mesh)
        return {**cache.read_json(results_file), '_outputs': cache.read_arrays(outputs_file),
                '_model': model_state, '_config': config, '_splits': splits}
    results = evaluate_run(workdir, evaluation, mesh=mesh, write=False)
    cache.write_json(results_file, {k: v for k, v in results.items() if not k.startswith('_')})
    cache.write_arrays(outputs_file, **results['_outputs'])
    return results


def _evaluate_runs(config, workdir: str, mesh):
    """{name: (run config, splits, evaluate_run results)} for every run."""
    runs, cache = {}, RunDir(workdir)
    for name, run_dir in zip(_names(config.evaluation.runs), config.evaluation.runs,
                             strict=True):
        results = _evaluate_cached(name, run_dir, config.evaluation, cache, mesh)
        runs[name] = (results['_config'], results['_splits'], results)
    labels = [r[2]['_outputs']['label'] for r in runs.values()]
    if any(x.shape != labels[0].shape or not np.array_equal(x, labels[0]) for x in labels):
        raise CamjaxError('the runs were not evaluated on the same test images in the same '
                          'order; a paired comparison needs one test set')
    return runs


def _summary_rows(runs) -> list[dict]:
    rows = []
    for name, (_, _, res) in runs.items():
        row = {'run': name, 'accuracy': res.get('classification', {}).get('accuracy')}
        row.update({k: res.get('localization', {}).get(k) for k in
                    ('top1_loc', 'gt_known_loc', 'max_box_acc', 'max_box_acc_v2')})
        row.update({f'fgsm {k}': v for k, v in res.get('fgsm', {}).items()})
        row.update({'sparsity': res['weights']['sparsity'],
                    'negative mass': res['weights']['negative_mass_share']})
        if 'multilabel' in res:
            row.update({'mAP': res['multilabel']['coco']['mAP'],
                        'mA': res['multilabel']['attributes']['mA']})
        rows.append(row)
    return rows


def _cam_panels(runs, count: int, seed: int, theta: float) -> dict:
    """Fig. 1-style panels of the same test images for every run."""
    first = next(iter(runs.values()))
    n = len(first[2]['_outputs']['label'])
    chosen = cam_grid.select_images(n, min(count, n), seed)
    panels = {}
    for name, (cfg, splits, res) in runs.items():
        model, state = res['_model']
        source = getattr(splits, cfg.evaluation.split)
        size = cfg.dataset.image_size
        images = np.stack([to_rgb(source[int(i)]['image'], size) for i in chosen])
        _, features, _ = forward(model, state.params, state.batch_stats, normalize_images(
            images, mean=tuple(cfg.dataset.mean), std=tuple(cfg.dataset.std)), train=False)
        outputs = res['_outputs']
        maps = localization.normalize_cams(cams=outputs['cam'][chosen], size=(size, size))
        boxes = np.asarray(localization.largest_component_box(
            masks=maps >= theta * maps.max(axis=(1, 2), keepdims=True)))
        kernel = np.asarray(state.params[CLASSIFIER]['kernel'])
        panels[name] = [cam_grid.make_panel(
            image=images[j], features=np.asarray(features[j]), kernel=kernel,
            positive_only=cfg.evaluation.positive_weights_only,
            probs=outputs['scores'][i], class_names=splits.class_names,
            label=int(outputs['label'][i]),
            gt_boxes=outputs['bbox'][i] if 'bbox' in outputs else None,
            pred_box=boxes[j] if boxes[j][0] >= 0 else None, image_caption=f'#{i}')
            for j, i in enumerate(chosen)]
    return panels


def landscape_indices(size: int, count: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of `count` of a split's `size` examples, in
    reading order. Not the split's first examples: image folders list their
    files class by class, so those would all be of one class."""
    return np.sort(np.random.default_rng(seed).permutation(size)[:min(count, size)])


def _landscapes(runs, config, mesh) -> dict | None:
    """Loss grids of the runs sharing the baseline's architecture, on shared
    directions, over `evaluation.landscape_batches` batches of test examples
    sampled with the analysis' seed (the same images for every run)."""
    e = config.evaluation
    names = list(runs)
    base_shapes = jax.tree.map(np.shape, runs[names[0]][2]['_model'][1].params)
    names = [n for n in names
             if jax.tree.map(np.shape, runs[n][2]['_model'][1].params) == base_shapes]
    loss_fns, params = {}, {}
    for name in names:
        cfg, splits, res = runs[name]
        model, state = res['_model']
        source, global_batch = getattr(splits, e.split), cfg.train.eval_batch_size
        global_size = min(e.landscape_batches * global_batch, splits.sizes[e.split])
        indices = landscape_indices(len(source), -(-global_size // jax.process_count()),
                                    config.seed)
        batches = list(eval_batches(source, cfg=cfg.dataset, global_batch=global_batch,
                                    global_size=global_size, indices=indices,
                                    sharding=parallel.batch_sharded(mesh)))
        loss_fns[name] = landscape.make_dataset_loss_fn(
            model, state.batch_stats, batches, tuple(cfg.dataset.mean), tuple(cfg.dataset.std),
            mesh=mesh)
        params[name] = state.params
    return landscape.landscape(loss_fns=loss_fns, params=params, key=jax.random.key(0),
                               steps=e.landscape_steps, span=e.landscape_span)


def analyze(config, workdir: str, splits=None) -> dict:
    """Evaluate `config.evaluation.runs` and write analysis.json and
    report.html into `workdir`. Returns the analysis summary."""
    e = config.evaluation
    mesh = parallel.make_mesh()
    names = _names(e.runs)
    # Checked before anything is evaluated or written: a bad group is refused.
    members = (seeds.group_runs(names, {n: run_config(w) for n, w in zip(names, e.runs,
                                                                            strict=True)},
                                e.groups) if e.groups else None)
    runs = _evaluate_runs(config, workdir, mesh)
    baseline = names[0]
    report = Report(f'camjax analysis: {", ".join(names)}')
    summary = {'runs': {n: {k: v for k, v in runs[n][2].items() if not k.startswith('_')}
                        for n in names}, 'per_class': {}}

    configs = {n: runs[n][0] for n in names}
    # Each run against the baseline; with seed groups, against the baseline
    # group's run of its own seed.
    paired_with = (seeds.seed_matched_baseline(members, configs) if members
                   else {n: baseline for n in names[1:]})
    comparisons = {}
    single_label = 'classification' in runs[baseline][2]
    if single_label:
        labels = runs[baseline][2]['_outputs']['label'].astype(np.int64)
        predictions = {n: metrics_lib.predicted_class(runs[n][2]['_outputs']['logits'])
                       for n in names}
        for name, control in paired_with.items():
            comparisons[name] = per_class.compare_per_class(
                labels=labels, baseline_pred=predictions[control], treated_pred=predictions[name],
                num_classes=runs[baseline][1].num_classes,
                class_names=runs[baseline][1].class_names)
            summary['per_class'][name] = {'baseline': control, **comparisons[name].to_dict()}

    report.heading('Summary')
    for name in names:
        report.paragraph(f'{name}: {summary_line(runs[name][2])}')
    for name, result in comparisons.items():
        report.paragraph(f'{name} vs {paired_with[name]}: {result.headline}', strong=True)
    rows = _summary_rows(runs)
    report.table(rows)

    if members:
        summary['groups'] = seeds.summarize(
            members, {row['run']: {k: v for k, v in row.items() if k != 'run'} for row in rows},
            configs)
        group_rows, paired_rows = seeds.report_rows(summary['groups'])
        report.heading('Seed groups')
        report.paragraph('Each group is one recipe over several seeds: mean ± standard '
                         'deviation (ddof=1) over its runs. Paired two-sided t-tests against '
                         f'the group {summary["groups"]["baseline"]!r} over the seeds both hold.')
        report.table(group_rows)
        report.table(paired_rows)
        unpaired = [n for g in list(members)[1:] for n in members[g] if n not in paired_with]
        if unpaired:
            report.paragraph(f'no baseline-group run has the seed of {", ".join(unpaired)}: '
                             'no per-class comparison for them')

    for name, result in comparisons.items():
        control = paired_with[name]
        report.heading(f'Per-class effects: {name} vs {control}')
        report.paragraph(result.headline, strong=True)
        report.figure(per_class.plot_per_class_deltas(result, title=f'{name} - {control}'),
                      'per-class accuracy change (percent points); * significant after Holm')
        report.table(per_class.per_class_table_rows(result))

    report.heading('CAM classifier weights')
    kernels = {n: np.asarray(runs[n][2]['_model'][1].params[CLASSIFIER]['kernel']) for n in names}
    report.figure(weight_analysis.weight_histogram_png(kernels, eps=e.sparsity_eps),
                  'classifier weights: positive and |negative| separately, runs overlaid')
    points = [{'name': n, 'sparsity': runs[n][2]['weights']['sparsity'],
               'accuracy': runs[n][2].get('classification', {}).get('accuracy'),
               'loc_accuracy': runs[n][2].get('localization', {}).get('gt_known_loc')}
              for n in names]
    if all(p['accuracy'] is not None for p in points):
        report.figure(weight_analysis.accuracy_vs_sparsity_png(points),
                      'classification and GT-known localization accuracy against sparsity')
    sweep = field_sweep.swept_field({n: runs[n][0] for n in names})
    if sweep and single_label:
        field, members = sweep
        records = {n: read_records(w) for n, w in zip(names, e.runs, strict=True)}
        rows = [{'name': n, 'value': field_sweep.field_value(runs[n][0], field),
                 'val_accuracy': _selected_val_accuracy(records[n]),
                 'test_accuracy': runs[n][2]['classification']['accuracy'],
                 'w_norm_sq': runs[n][2]['weights']['l2'] ** 2} for n in members]
        summary['sweep'] = {'field': field, 'runs': rows}
        report.figure(field_sweep.sweep_png(field, rows),
                      f'accuracy and ||W||^2 against {field} ({len(rows)} runs that differ '
                      'in nothing else)')
    for name in names:  # softmax regression: each class's weights as an image
        cfg, run_splits = runs[name][0], runs[name][1]
        if cfg.model.name == 'linear':
            report.figure(weight_analysis.class_weight_images_png(
                kernels[name], image_size=cfg.dataset.image_size,
                class_names=run_splits.class_names),
                f'{name}: each class\'s weights W[:, k] as an image, min-max scaled per class')

    if single_label and e.cam_grid_images:
        report.heading('Class activation maps')
        report.figure(cam_grid.cam_grid_png(_cam_panels(runs, e.cam_grid_images, config.seed,
                                                        e.loc_theta)),
                      'input, ground-truth class CAM (green: true box, red: CAM box at '
                      f'theta={e.loc_theta}), top-4 negative CAMs by probability')

    if single_label and e.landscape_batches:
        grids = _landscapes(runs, config, mesh)
        report.heading('Loss landscape (filter-normalized directions, Li et al. 2018)')
        a, b = grids['alphas'], grids['betas']
        report.figure(landscape.compare_png(a, b, grids['grids']), 'contours on shared directions')
        for name, grid in grids['grids'].items():
            report.figure(landscape.heatmap_png(a, b, grid, name), f'{name}: heat map')
            report.figure(landscape.surface_png(a, b, grid, name), f'{name}: surface')
        summary['landscape'] = {n: float(g[len(a) // 2, len(b) // 2])
                                for n, g in grids['grids'].items()}

    report.heading('Training curves')
    report.figure(curves_png({n: read_records(w) for n, w in
                              zip(names, e.runs, strict=True)}),
                  'from each run\'s metrics.jsonl')
    report.heading('Configs')
    report.preformatted(json.dumps(config.to_dict(), indent=2, default=str),
                        summary='this analysis')
    for name in names:
        report.preformatted(json.dumps(runs[name][0].to_dict(), indent=2, default=str),
                            summary=name)
    rundir = RunDir(workdir)
    rundir.write_json('analysis.json', summary, default=_json_default)
    rundir.write_text('report.html', report.html())
    figures = epath.Path(rundir.file('figures'))  # the report's figures as PNGs, for papers
    if rundir.is_writer and figures.exists():
        for stale in figures.glob('*.png'):  # an earlier analysis's
            stale.unlink()
    for i, (caption, png) in enumerate(report.figures, 1):
        rundir.write_bytes(f'figures/{i:02d}-{safe_filename(caption, max_length=48)}.png', png)
    if jax.process_index() == 0:
        for name, result in comparisons.items():
            print(f'{name} vs {paired_with[name]}: {result.headline}', flush=True)
        for group, g in summary.get('groups', {}).get('paired', {}).items():
            test = g['tests'].get('accuracy')
            if test and test['p'] is not None:
                print(f'{group} - {summary["groups"]["baseline"]}: accuracy '
                      f'{test["mean_difference"]:+.4f} over {test["n"]} seeds (paired t-test '
                      f'p={test["p"]:.3g})', flush=True)
        print(f'wrote {rundir.file("report.html")}', flush=True)
    return summary


def _selected_val_accuracy(records: list[dict]):
    """Validation accuracy at the checkpoint the run selected (its 'best'
    record's step), or at its last eval; None without a validation split."""
    evals = [r for r in records if r['kind'] == 'eval' and 'val' in r]
    best = [r['step'] for r in records if r['kind'] == 'best']
    chosen = [r for r in evals if r['step'] == best[-1]] if best else evals[-1:]
    return chosen[-1]['val']['accuracy'] if chosen else None


def _json_default(value):
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)
