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

from camjax.config.schema import base_config
from camjax.errors import CamjaxError, ConfigError
from camjax.rundir import RunDir

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                lock_config=False)
flags.DEFINE_string('workdir', None, 'Run directory; defaults to runs/<config stem>.')
flags.DEFINE_enum('mode', None, ['train', 'refine', 'sweep', 'eval', 'analyze'],
                  'Overrides config.mode. --mode=eval --workdir=DIR needs no --config: it '
                  "evaluates the run in DIR by its own config.json.")
config_flags.DEFINE_config_dict('evaluation', base_config().evaluation,
                                'Evaluation settings for --mode=eval / analyze, e.g. '
                                '--evaluation.split=val (also --config.evaluation.*).',
                                lock_config=False)


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


def run(config, workdir: str, *, explicit: dict | None = None) -> None:
    """Run `config` in `workdir`. `explicit` are the command line's
    `--config.*` overrides ({'a.b': value}): in eval, refine and sweep, one
    that contradicts the trained run's saved config is refused."""
    import jax

    from camjax import objectives, parallel
    from camjax.config import preflight
    from camjax.config import saved as saved_config
    from camjax.config import schema as config_schema
    from camjax.data import open_splits
    from camjax.data.summary import describe_splits

    parallel.maybe_initialize_distributed()
    config.loss = config_schema.parse_loss_terms(config.loss)
    explicit = explicit or {}
    if config.mode == 'eval':  # evaluates the run already in the workdir, by its own config
        evaluation = config.evaluation
        config, ignored = saved_config.eval_config(workdir, config, explicit=explicit)
        config.evaluation = evaluation
        _note_ignored(ignored, f'{workdir}/config.json')
    config_schema.validate(config, num_devices=jax.device_count())
    preflight.check_paths(config)
    if config.mode in ('refine', 'sweep'):
        config, ignored = saved_config.refine_config(config, explicit=explicit)
        _note_ignored(ignored, f'{config.train.init_from}/config.json')
    splits = None
    if config.mode != 'analyze':  # analyze opens each compared run's own data
        splits = open_splits(config.dataset, process_index=jax.process_index(),
                             process_count=jax.process_count())
        objectives.validate_terms(config.loss, num_classes=splits.num_classes,
                                  multilabel=splits.multilabel)
        preflight.check_inputs(config, splits)
        if jax.process_index() == 0:
            for line in describe_splits(splits, config.dataset):
                print(f'data {line}', flush=True)
    if config.mode != 'eval':
        RunDir(workdir).create(config)
    run_mode(config, workdir, splits)


def _note_ignored(paths: list[str], source: str) -> None:
    if paths:
        shown = ', '.join(paths[:8]) + (f' and {len(paths) - 8} more' if len(paths) > 8 else '')
        print(f'camjax: using {source} for {shown} (the --config file differs)', flush=True)


def run_mode(config, workdir: str, splits):
    """Dispatch on config.mode; returns what the mode returns."""
    if config.mode == 'train':
        from camjax.training.train import train_and_evaluate
        return train_and_evaluate(config, workdir, splits)
    if config.mode == 'eval':
        from camjax.evaluation.evaluate import evaluate
        return evaluate(config, workdir, splits)
    if config.mode == 'analyze':
        from camjax.analysis.analyze import analyze
        return analyze(config, workdir)
    from camjax.training import refine
    if config.mode == 'refine':
        return refine.refine(config, workdir, splits)
    return refine.sweep(config, workdir, splits)


def command_line_config():
    """(config, workdir, explicit overrides) from the flags. Without --config,
    --mode=eval evaluates --workdir by its saved config.json."""
    evaluation = config_flags.get_override_values(FLAGS['evaluation'])
    if FLAGS.config is None:
        if FLAGS.mode != 'eval' or not FLAGS.workdir:
            fail('--config is required, e.g. --config=configs/default.py (or evaluate a '
                 'trained run with --mode=eval --workdir=DIR)')
        config = RunDir(FLAGS.workdir).trained_config()
        explicit, workdir = {}, FLAGS.workdir
    else:
        config = FLAGS.config
        explicit = config_flags.get_override_values(FLAGS['config'])
        workdir = FLAGS.workdir or default_workdir(FLAGS['config'].config_filename)
    if FLAGS.mode:
        config.mode = FLAGS.mode
    for key, value in evaluation.items():
        config.evaluation[key] = value
    return config, workdir, explicit


def main(argv):
    # Orbax and grain log every save/restore at INFO; progress lines are ours.
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        fail(f'unexpected arguments: {" ".join(argv[1:])}')
    try:
        config, workdir, explicit = command_line_config()
        run(config, workdir, explicit=explicit)
    except ConfigError as e:
        fail(f'config: {e}')
    except CamjaxError as e:
        fail(str(e))


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
