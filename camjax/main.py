"""camjax command line: `python -m camjax.main --config=configs/<name>.py
[--workdir=DIR] [--config.field=value ...]`.

Parses and validates the config, opens the data, takes the workdir's lock,
writes `config.json` into the workdir (default runs/<config stem>), then runs
`config.mode`. Exit status: 0 done, or stopped by SIGTERM after saving (130
for SIGINT; rerun the same command to resume); 1 --mode=check found problems
in the data; 2 a problem the user can fix (one line on stderr, before
anything is written); 3 the run went non-finite and stopped.
"""

import contextlib
import os
import re
import shlex
import sys

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from camjax import paths
from camjax.config.schema import MODES, base_config, override_problem
from camjax.errors import CamjaxError, ConfigError
from camjax.rundir import RunDir

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                lock_config=False)
flags.DEFINE_string('workdir', None, 'Run directory; defaults to runs/<config stem>.')
flags.DEFINE_enum('mode', None, list(MODES),
                  'Overrides config.mode. --mode=eval --workdir=DIR needs no --config: it '
                  "evaluates the run in DIR by its own config.json. --mode=check scans the "
                  'dataset and reports what is wrong with it, writing nothing.')
NONFINITE_EXIT_STATUS = 3  # the run diverged: distinct from 2, bad input


def fail(message: str) -> None:
    print(f'camjax: error: {message}', file=sys.stderr, flush=True)
    sys.exit(2)


def _one_line(text) -> str:
    """`text`, or an exception's message, as one line. str() of a KeyError
    (also one wrapped in another exception) is the repr of its message:
    quotes and literal \\n; the message itself is used."""
    if isinstance(text, BaseException) and len(text.args) == 1 and (
            isinstance(text, KeyError) or isinstance(text.args[0], BaseException)):
        return _one_line(text.args[0])
    return ' '.join(str(text).split())


def _define_evaluation_flag() -> None:
    """--evaluation.*: ml_collections applies these overrides from sys.argv
    while the flag is defined, so an unknown field fails here, at import."""
    evaluation = base_config().evaluation
    try:
        config_flags.DEFINE_config_dict('evaluation', evaluation,
                                        'Evaluation settings for --mode=eval / analyze, e.g. '
                                        '--evaluation.split=val (also --config.evaluation.*).',
                                        lock_config=False)
    except (AttributeError, KeyError, TypeError) as e:
        config = ConfigDict({'evaluation': evaluation})
        problems = [override_problem(config, arg[2:].split('=')[0]) for arg in sys.argv[1:]
                    if arg.startswith('--evaluation.')]
        fail(f'bad flag: {next(filter(None, problems), None) or _one_line(e)}')


_define_evaluation_flag()


def parse_flags(argv):
    try:
        remaining = FLAGS(argv)
    except flags.Error as e:
        fail(f'bad flag: {_one_line(e)}')
    except ConfigError as e:  # a config file's own check, e.g. an unknown variant
        fail(f'config: {e}')
    except Exception as e:  # config files may raise anything while loading  # noqa: BLE001
        fail(_load_failure(argv, e))
    config = FLAGS['config'].value
    if config is not None and not isinstance(config, ConfigDict):
        # An unreadable file loads as a stand-in that raises on first use.
        fail(_load_failure(argv, None))
    return remaining


def _config_arg(argv) -> str | None:
    """The last --config value on the command line (`--config=X` or `--config X`)."""
    value = None
    for i, arg in enumerate(argv):
        match = re.match(r'--?config(?:=(.*))?$', arg)
        if match:
            value = match.group(1) if match.group(1) is not None else (
                argv[i + 1] if i + 1 < len(argv) else None)
    return value


def _load_failure(argv, error) -> str:
    """The one-line message for a --config that did not load: a missing
    file, an override naming no field of it (ml_collections raises an
    AttributeError or KeyError then), or what the file raised (`error`;
    None: it returned no ConfigDict)."""
    arg = _config_arg(argv)
    path = arg.partition(':')[0] if arg else None
    if path is not None and not os.path.isfile(path):
        return f'--config: config file {path!r} does not exist'
    if isinstance(error, (AttributeError, KeyError)):
        try:
            config = FLAGS['config'].parser.parse(arg)
        except Exception:  # noqa: BLE001 -- then the original error is the news
            config = None
        if isinstance(config, ConfigDict):
            for arg_i in argv:
                match = re.match(r'--?(?:no)?config\.([^=]+)', arg_i)
                problem = match and override_problem(config, match.group(1))
                if problem:
                    return f'config: {problem}'
    if error is None:
        return f'--config: {arg!r} did not give a config (get_config() must return a ConfigDict)'
    return f'could not load config {arg!r}: {type(error).__name__}: {_one_line(error)}'


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

    from camjax import compile_cache, lock, objectives, parallel
    from camjax.config import preflight
    from camjax.config import saved as saved_config
    from camjax.config import schema as config_schema
    from camjax.data import open_splits
    from camjax.data.summary import describe_splits

    for path in (workdir, config.train.init_from, config.dataset.data_dir,
                 config.dataset.name.partition(':')[2], *config.evaluation.runs):
        paths.check_supported(path)
    compile_cache.enable()  # before the first compile
    parallel.maybe_initialize_distributed()
    config.loss = config_schema.parse_loss_terms(config.loss)
    explicit = explicit or {}
    if config.mode == 'eval':  # evaluates the run already in the workdir, by its own config
        evaluation = config.evaluation
        config, ignored = saved_config.eval_config(workdir, config, explicit=explicit)
        config.evaluation = evaluation
        _note_ignored(ignored, f'{workdir}/config.json')
    if config.mode in ('refine', 'sweep') and config.train.init_from:
        # The model and input come from the refined run, so the config file's
        # own (say, a dataset path that does not exist here) are not checked.
        config, ignored = saved_config.refine_config(config, explicit=explicit)
        _note_ignored(ignored, f'{config.train.init_from}/config.json')
    # Per-device sizes become global ones only now, after jax.distributed.
    config_schema.resolve_device_sizes(config, num_devices=jax.device_count(),
                                       explicit=explicit)
    config_schema.validate(config, num_devices=jax.device_count())
    if jax.process_index() == 0 and config.mode != 'check':
        lock.check_free(workdir)  # before the data is opened, which can take long
    if config.mode in ('train', 'refine', 'sweep'):
        from camjax.checkpoint import check_not_imported
        check_not_imported(workdir)
    preflight.check_paths(config)
    if config.mode == 'check':  # scans the data and reports; writes nothing
        from camjax.data.check import check_dataset
        problems = check_dataset(config.dataset)
        sys.exit(1 if problems else 0)
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
    with lock.held(workdir, writer=jax.process_index() == 0):  # one run per workdir
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
        paths.check_supported(FLAGS.workdir)
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


def resume_command() -> str:
    """This invocation, as the command that resumes it."""
    return shlex.join(['python', '-m', 'camjax.main', *sys.argv[1:]])


def main(argv):
    # Orbax and grain log every save/restore at INFO; progress lines are ours.
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        fail(f'unexpected arguments: {" ".join(argv[1:])}')
    from camjax.training.interrupt import EXIT_STATUS, Stopped, StopSignals
    from camjax.training.nonfinite import NonFiniteError
    try:
        config, workdir, explicit = command_line_config()
        # Training, refine and sweep loops turn a signal into a save and a stop;
        # eval, analyze and check have nothing to save, so a signal ends them.
        loops = config.mode in ('train', 'refine', 'sweep')
        with StopSignals(before_jax=True) if loops else contextlib.nullcontext():
            run(config, workdir, explicit=explicit)
    except Stopped as e:
        print(f'camjax: {e}, after saving a checkpoint; resume with: {resume_command()}',
              file=sys.stderr, flush=True)
        sys.exit(EXIT_STATUS[e.signal_name])
    except NonFiniteError as e:
        print(f'camjax: error: {e}', file=sys.stderr, flush=True)
        sys.exit(NONFINITE_EXIT_STATUS)
    except ConfigError as e:
        fail(f'config: {e}')
    except CamjaxError as e:
        fail(str(e))


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
