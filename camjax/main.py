"""camjax command line: `python -m camjax.main --config=configs/<name>.py
[--workdir=DIR] [--config.field=value ...]`.

Parses and validates the config, opens the data, writes `config.json` into the
workdir (default runs/<config stem>), then runs `config.mode`. Any problem the
user can fix is one line on stderr and exit status 2, before anything is
written.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from camjax.errors import CamjaxError, ConfigError
from camjax.rundir import RunDir

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                lock_config=False)
flags.DEFINE_string('workdir', None, 'Run directory; defaults to runs/<config stem>.')


def fail(message: str) -> None:
    print(f'camjax: error: {message}', file=sys.stderr, flush=True)
    sys.exit(2)


def _one_line(text: str) -> str:
    return ' '.join(str(text).split())


def parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(f'bad flag: {_one_line(e)}')
    except Exception as e:  # config files may raise anything while loading  # noqa: BLE001
        fail(f'could not load config: {type(e).__name__}: {_one_line(e)}')


def default_workdir(config_arg: str) -> str:
    """runs/<config stem>, plus the variant: configs/x.py:a,b -> runs/x_a-b."""
    path, _, variant = config_arg.partition(':')
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join('runs', stem + (f'_{variant.replace(",", "-")}' if variant else ''))


def run(config, workdir: str) -> None:
    import jax

    from camjax import config_schema, objectives, parallel, preflight
    from camjax.data import open_splits

    parallel.maybe_initialize_distributed()
    config.loss = config_schema.parse_loss_terms(config.loss)
    config_schema.validate(config, num_devices=jax.device_count())
    preflight.check_paths(config)
    splits = open_splits(config.dataset, process_index=jax.process_index(),
                         process_count=jax.process_count())
    objectives.validate_terms(config.loss, num_classes=splits.num_classes,
                              multilabel=splits.multilabel)
    preflight.check_inputs(config, splits)
    if config.mode == 'eval':  # evaluates the run already in the workdir
        if not os.path.isdir(workdir):
            raise CamjaxError(f'mode=eval evaluates a trained run, and {workdir!r} does not '
                              'exist (pass --workdir)')
    else:
        RunDir(workdir).create(config)
    run_mode(config, workdir, splits)


def run_mode(config, workdir: str, splits):
    """Dispatch on config.mode; returns what the mode returns."""
    if config.mode == 'train':
        from camjax.train import train_and_evaluate
        return train_and_evaluate(config, workdir, splits)
    if config.mode == 'eval':
        from camjax.evaluate import evaluate
        return evaluate(config, workdir, splits)
    if config.mode == 'analyze':
        from camjax.analyze import analyze
        return analyze(config, workdir)
    from camjax import refine
    if config.mode == 'refine':
        return refine.refine(config, workdir, splits)
    return refine.sweep(config, workdir, splits)


def main(argv):
    # Orbax and grain log every save/restore at INFO; progress lines are ours.
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        fail(f'unexpected arguments: {" ".join(argv[1:])}')
    if FLAGS.config is None:
        fail('--config is required, e.g. --config=configs/default.py')
    workdir = FLAGS.workdir or default_workdir(FLAGS['config'].config_filename)
    try:
        run(FLAGS.config, workdir)
    except ConfigError as e:
        fail(f'config: {e}')
    except CamjaxError as e:
        fail(str(e))


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
