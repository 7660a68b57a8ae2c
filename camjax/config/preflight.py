"""The checks that need the dataset or the file system, run after
`config_schema.validate` and before anything is written: the checkpoint to
start from (its steps, and its variables' shapes against the configured model
and head), the runs an analysis compares, and a selection metric the data
provides. Each failure is a ConfigError or CamjaxError naming the problem.
"""

from etils import epath

from camjax.checkpoint import saved_steps
from camjax.errors import CamjaxError, ConfigError
from camjax.rundir import CONFIG, RunDir
from camjax.training.state import check_pretrained, model_from_config


def check_paths(config) -> None:
    """What needs only the file system, checked before the data is opened:
    the checkpoint to start from and the runs an analysis compares."""
    if config.train.init_from and config.mode in ('train', 'refine', 'sweep'):
        source, wanted = config.train.init_from, config.train.init_from_step
        if not epath.Path(source).is_dir():
            raise CamjaxError(f'train.init_from={source!r} does not exist (it names the workdir '
                              'or checkpoint directory of a trained run)')
        steps = saved_steps(source)
        if not steps:
            raise CamjaxError(f'no checkpoints in {source!r} to start from')
        if wanted >= 0 and wanted not in steps and config.mode != 'sweep':
            raise CamjaxError(f'{source!r} has no checkpoint for step {wanted} (it has {steps})')
    if config.mode == 'analyze':
        for workdir in config.evaluation.runs:
            check_trained_run(workdir)


def check_inputs(config, splits) -> None:
    """Everything `check_paths` checks, and what needs the opened data."""
    check_paths(config)
    if splits.multilabel and config.train.selection_metric == 'top5_accuracy':
        raise ConfigError("train.selection_metric='top5_accuracy' needs single-label data; "
                          'multi-label evaluations report label accuracy and loss')
    if config.mode in ('refine', 'sweep'):
        _check_refine_source(config, splits)
    elif config.mode == 'train' and config.train.init_from:
        _check_init_from(config, splits, new_classifier_ok=True)


def check_trained_run(workdir: str) -> None:
    """`workdir` holds a camjax run with at least one checkpoint."""
    if not RunDir(workdir).exists(CONFIG):
        raise CamjaxError(f'{workdir!r} is not a camjax run (no config.json)')
    if not saved_steps(workdir):
        raise CamjaxError(f'{workdir!r} has no checkpoints to evaluate')


def _check_init_from(config, splits, *, new_classifier_ok: bool) -> None:
    """The saved variables of train.init_from fit the configured model."""
    source = config.train.init_from
    wanted = None if config.train.init_from_step < 0 else config.train.init_from_step
    model = model_from_config(config, num_classes=splits.num_classes)
    for step in (saved_steps(source) if config.mode == 'sweep' else [wanted]):
        check_pretrained(model, config.dataset.image_size, source, step,
                         new_classifier_ok=new_classifier_ok)


def _check_refine_source(config, splits) -> None:
    """Refine / sweep: the variant fits the labels, and train.init_from holds
    checkpoints of this very model (same architecture and head)."""
    if splits.multilabel and config.refine.variant == 'linrc':
        raise ConfigError("refine.variant='linrc' scores classes with P2 > 1/K, which is "
                          'defined for single-label softmax outputs, not multi-label data')
    _check_init_from(config, splits, new_classifier_ok=False)
