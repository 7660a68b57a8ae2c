"""Evaluation of a trained run (`config.mode = 'eval'`): classification with
per-class accuracy, CAM localization, FGSM robustness, classifier-weight
statistics and multi-label metrics, on the run's best (or latest) checkpoint.

Read top to bottom: restoring a run -> one pass collecting outputs -> the
metrics -> `evaluate_run`, which writes `<workdir>/eval/eval.json` and
`predictions.npz` (the paired predictions `analyze` compares).
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from camjax import losses, objectives, parallel
from camjax.analysis import multilabel as multilabel_metrics
from camjax.analysis import weights as weight_analysis
from camjax.checkpoint import BEST_DIR, saved_steps
from camjax.data import eval_batches, normalize_images, open_splits
from camjax.errors import CamjaxError
from camjax.evaluation import classification, localization
from camjax.evaluation import metrics as metrics_lib
from camjax.models import CLASSIFIER
from camjax.rundir import EVAL_DIR, RunDir
from camjax.training.state import forward, init_state, load_pretrained, model_from_config

# =============================================================================
# Restoring a run
# =============================================================================
# The evaluation settings `evaluate_run` reads (analyze keys its cache by them).
RUN_EVALUATION_FIELDS = ('checkpoint', 'split', 'fgsm_eps', 'loc_theta', 'cam_threshold_step',
                         'positive_weights_only', 'sparsity_eps')


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a camjax run wrote to `workdir/config.json`."""
    return RunDir(workdir).trained_config()


def evaluated_checkpoint(workdir: str, which: str) -> tuple[str, int]:
    """(directory, step) of the checkpoint that evaluation `which` reads:
    the best by validation ('best', falling back to the newest when the run
    kept none) or the newest ('latest')."""
    best = str(epath.Path(workdir) / BEST_DIR)
    use_best = which == 'best' and epath.Path(best).is_dir() and saved_steps(best)
    source = best if use_best else workdir
    return source, saved_steps(source)[-1]


def restore_model(config, workdir: str, *, num_classes: int, which: str, mesh):
    """(model, state) of `workdir`'s checkpoint chosen by `evaluated_checkpoint`."""
    model = model_from_config(config, num_classes=num_classes)
    state = init_state(model, lambda params: {}, seed=config.seed,
                       image_size=config.dataset.image_size, mesh=mesh)
    source, step = evaluated_checkpoint(workdir, which)
    return model, load_pretrained(state, source, step, new_classifier_ok=False)


# =============================================================================
# One pass over a split
# =============================================================================
def make_output_step(model, *, mean, std, mesh, positive_weights_only: bool):
    """Jitted `(state, batch) -> outputs` of one eval batch: 'scores'
    (softmax, or sigmoid for multi-label (B,K) labels) and, for single-label
    data, 'logits' and 'cam' (B,h,w): the ground-truth class's CAM without bias, from the
    positive classifier weights only if asked (negative weights clamped)."""

    def step(state, batch):
        images = normalize_images(batch['image'], mean=mean, std=std)
        logits, features, _ = forward(model, state.params, state.batch_stats, images,
                                      train=False)
        logits = logits.astype(jnp.float32)
        if batch['label'].ndim == 2:
            return {'scores': jax.nn.sigmoid(logits)}
        cam = losses.class_activation_maps(
            features=features.astype(jnp.float32), kernel=state.params[CLASSIFIER]['kernel'],
            classes=batch['label'][:, None], positive_only=positive_weights_only)[:, 0]
        return {'logits': logits, 'scores': jax.nn.softmax(logits), 'cam': cam}

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(replicated, sharded), out_shardings=sharded)


def _host(x):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def collect_outputs(step, state, batches) -> dict:
    """Host arrays over every real example: 'label', 'scores', and where
    present 'cam' and 'bbox'."""
    parts = {}
    for batch in batches:
        outputs = step(state, batch)
        keep = _host(batch['mask']) > 0
        for key, value in {**outputs, 'label': batch['label'],
                           **({'bbox': batch['bbox']} if 'bbox' in batch else {})}.items():
            parts.setdefault(key, []).append(_host(value)[keep])
    return {key: np.concatenate(value) for key, value in parts.items()}


# =============================================================================
# Metrics
# =============================================================================
def centred_box_baseline(gt_boxes, size: int, *, iou_threshold: float = 0.5) -> dict:
    """Localization of a box centred in the image with the mean ground-truth
    box size: the score of knowing the typical box but nothing about the image.
    CAM localization should beat it."""
    first = gt_boxes[:, 0].astype(np.float64)
    w = float(np.mean(first[:, 2] - first[:, 0] + 1))
    h = float(np.mean(first[:, 3] - first[:, 1] + 1))
    x0, y0 = round((size - w) / 2), round((size - h) / 2)
    box = np.asarray([x0, y0, x0 + round(w) - 1, y0 + round(h) - 1], np.float32)
    iou = np.asarray(localization.box_iou(a=np.broadcast_to(box, gt_boxes.shape),
                                          b=gt_boxes.astype(np.float32)))
    return {'box': box.tolist(), 'loc': float(np.mean(np.max(iou, axis=-1) >= iou_threshold))}


def localization_metrics(*, cams, gt_boxes, correct, image_size: int, theta: float,
                         threshold_step: float, chunk: int = 1024) -> dict:
    """Top-1 / GT-known loc at tau = theta * max (CAM paper), MaxBoxAcc (IoU
    0.5) and MaxBoxAccV2 (all components, IoU 0.3/0.5/0.7) over CAM thresholds
    0, step, ..., < 1 -- on ground-truth-class CAMs upsampled to the image and
    min-max normalized, in chunks of images to bound memory."""
    thresholds = np.arange(0.0, 1.0, threshold_step)
    ious = {'fixed': [], 'v1': [], 'v2': []}
    for start in range(0, len(cams), chunk):
        maps = localization.normalize_cams(cams=cams[start:start + chunk],
                                           size=(image_size, image_size))
        # One component-tree pass gives the tau = theta * max boxes, V1 and V2.
        swept = localization.sweep_ious(cams=maps, gt_boxes=gt_boxes[start:start + chunk],
                                        thresholds=thresholds, theta=theta)
        ious['fixed'].append(swept['fixed'])
        ious['v1'].append(swept['largest'])
        ious['v2'].append(swept['any'])
    fixed = np.concatenate(ious['fixed']) >= 0.5
    v1 = localization.box_accuracy(ious=np.concatenate(ious['v1']), thresholds=thresholds)
    v2 = localization.box_accuracy(ious=np.concatenate(ious['v2']), thresholds=thresholds,
                                   iou_thresholds=(0.3, 0.5, 0.7))
    return {'theta': theta, 'gt_known_loc': float(np.mean(fixed)),
            'top1_loc': float(np.mean(fixed & correct)),
            'max_box_acc': float(v1['box_acc'][0]),
            'max_box_acc_threshold': float(v1['best_threshold'][0]),
            'max_box_acc_v2': v2['box_acc_mean'],
            'max_box_acc_v2_per_iou': {f'{t:.1f}': float(a) for t, a in
                                       zip(v2['iou_thresholds'], v2['box_acc'], strict=True)},
            'max_box_acc_v2_thresholds': [float(t) for t in v2['best_threshold']],
            'centred_box_baseline': centred_box_baseline(gt_boxes, image_size)}


# =============================================================================
# A whole run
# =============================================================================
def evaluate_run(workdir: str, evaluation, *, splits=None, mesh=None,
                 write: bool = True) -> dict:
    """Evaluate the run in `workdir` with the `evaluation` settings (a config
    group as config.evaluation). The model, preprocessing and data come from
    the run's own config.json; `splits`, when given, must be its dataset
    opened. Returns the results and, with `write`, stores them in
    `workdir/eval/`. Also returns the host outputs under '_outputs', the
    restored (model, state) under '_model' and the run's config under
    '_config' for `analyze`."""
    from camjax.evaluation import robustness

    config = run_config(workdir)
    config.evaluation = evaluation
    if splits is None:
        splits = open_splits(config.dataset, process_index=jax.process_index(),
                             process_count=jax.process_count())
    e, d = config.evaluation, config.dataset
    mesh = mesh or parallel.make_mesh()
    model, state = restore_model(config, workdir, num_classes=splits.num_classes,
                                 which=e.checkpoint, mesh=mesh)
    source = getattr(splits, e.split)
    if source is None:
        raise CamjaxError(f'the dataset has no {e.split!r} split to evaluate')

    def batches():
        return eval_batches(source, cfg=d, global_batch=config.train.eval_batch_size,
                            global_size=splits.sizes[e.split],
                            sharding=parallel.batch_sharded(mesh))

    norm = {'mean': tuple(d.mean), 'std': tuple(d.std), 'mesh': mesh}
    # The training loop's own evaluator: accuracy, loss terms, per-class
    # accuracy and negative-CAM peakiness, exactly as its eval records have them.
    summary = classification.evaluate(classification.make_eval_step(
        model, objectives.build_objective(config.loss), num_classes=splits.num_classes,
        negative_cam_k=config.train.eval_negative_cam_k,
        pos_rate=RunDir(workdir).positive_rate(splits, record=False), **norm), state, batches())
    step = make_output_step(model, positive_weights_only=e.positive_weights_only, **norm)
    outputs = collect_outputs(step, state, batches())
    kernel = np.asarray(jax.device_get(state.params[CLASSIFIER]['kernel']), np.float32)
    results = {'workdir': workdir, 'split': e.split, 'checkpoint': e.checkpoint,
               'weights': {k: v for k, v in weight_analysis.weight_stats(
                   kernel, eps=e.sparsity_eps).items()}}
    if splits.multilabel:
        labels = outputs['label'].astype(np.int64)
        results['multilabel'] = {
            'coco': multilabel_metrics.coco_metrics(scores=outputs['scores'], labels=labels),
            'attributes': multilabel_metrics.pedestrian_attribute_metrics(
                scores=outputs['scores'], labels=labels),
            'label_accuracy': summary['accuracy'], 'loss': summary['loss']}
    else:
        labels = outputs['label'].astype(np.int64)
        results['classification'] = summary
        correct = metrics_lib.predicted_class(outputs['logits']) == labels
        if 'bbox' in outputs:
            results['localization'] = localization_metrics(
                cams=outputs['cam'], gt_boxes=outputs['bbox'], correct=correct,
                image_size=d.image_size, theta=e.loc_theta, threshold_step=e.cam_threshold_step)
            results['localization']['positive_weights_only'] = e.positive_weights_only
        if e.fgsm_eps:
            fgsm = robustness.make_fgsm_eval_step(model, eps_values=tuple(e.fgsm_eps),
                                                  num_classes=splits.num_classes, **norm)
            results['fgsm'] = {f'{k:g}': v for k, v in
                               robustness.fgsm_accuracy(fgsm, state, batches()).items()}
    if write:
        rundir = RunDir(workdir)
        rundir.write_json(os.path.join(EVAL_DIR, 'eval.json'), results)
        rundir.write_arrays(os.path.join(EVAL_DIR, 'predictions.npz'), labels=outputs['label'],
                            scores=outputs['scores'])
    return {**results, '_outputs': outputs, '_model': (model, state), '_config': config,
            '_splits': splits}


def summary_line(results: dict) -> str:
    """One line: accuracy, localization and FGSM numbers of `evaluate_run`."""
    parts = []
    if 'classification' in results:
        parts.append(f'accuracy {100 * results["classification"]["accuracy"]:.2f}')
    if 'multilabel' in results:
        parts.append(f'mAP {100 * results["multilabel"]["coco"]["mAP"]:.2f}')
    loc = results.get('localization')
    if loc:
        parts.append(f'top-1 loc {100 * loc["top1_loc"]:.2f}, GT-known loc '
                     f'{100 * loc["gt_known_loc"]:.2f}, MaxBoxAcc {100 * loc["max_box_acc"]:.2f}'
                     f', MaxBoxAccV2 {100 * loc["max_box_acc_v2"]:.2f} (centred box '
                     f'{100 * loc["centred_box_baseline"]["loc"]:.2f})')
    if 'fgsm' in results:
        parts.append('FGSM ' + ', '.join(f'eps {k}: {100 * v:.2f}'
                                         for k, v in results['fgsm'].items()))
    parts.append(f'classifier sparsity {100 * results["weights"]["sparsity"]:.1f}%')
    return '; '.join(parts)


def evaluate(config, workdir: str, splits) -> dict:
    """Mode 'eval': evaluate the run in `workdir` (config is its own saved
    config with the evaluation settings) and print the summary."""
    results = evaluate_run(workdir, config.evaluation, splits=splits)
    if jax.process_index() == 0:
        print(f'eval ({config.evaluation.split}, {config.evaluation.checkpoint} checkpoint): '
              + summary_line(results), flush=True)
    return results
