"""Bad command lines, table-driven: each must give exactly one line on stderr,
`camjax: error: ...` naming the offending field, exit status 2, and write
nothing (the --workdir it names must not exist afterwards).

The CLI runs in-process (a subprocess costs ~4 s of JAX import per case):
`parse_flags` then `main`, as `app.run` calls them. Two real subprocesses
check that the in-process runs match the real command line."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

SMOKE = '--config=configs/default.py:smoke'  # 2 steps on 32px synthetic data, if it ever ran
RAISES = 'def get_config(arg=None):\n    raise RuntimeError("boom\\nsecond line")\n'

# name: (command line, what its one line must contain). '{tmp}' is a fresh
# directory holding nothing but the config files below; '{raises}' names a
# config file that raises.
CASES = {
    # The three that named the wrong field or printed an exception's repr.
    'eval batch size negative': (
        [SMOKE, '--config.train.eval_batch_size=-32'],
        'config: train.eval_batch_size must be > 0, got -32'),
    'model num_classes': (
        [SMOKE, '--config.model.num_classes=10'],
        "config: unknown config key 'model.num_classes': a model's class count is not "
        'configured, it comes from the dataset (dataset.name)'),
    'unknown key suggests': (
        [SMOKE, '--config.train.lerning_rate=1'],
        "config: unknown config key 'train.lerning_rate'; did you mean "
        "'optimizer.learning_rate'?"),
    # Unknown keys and flags.
    'unknown group': ([SMOKE, '--config.trian.batch_size=8'],
                      "'trian.batch_size'; did you mean 'train.batch_size'?"),
    'unknown top-level key': ([SMOKE, '--config.random_flip=1'],
                              "'random_flip'; did you mean 'dataset.random_flip'?"),
    'unknown model field': ([SMOKE, '--config.model.widht=3'],
                            "model.'widht' for model 'resnet8'"),
    'model field the file leaves out': (
        ['--config=configs/default.py', '--config.model.dtype=bfloat16'],
        "model.dtype is a field of model 'resnet8' that the config file does not set"),
    'unknown flag': ([SMOKE, '--bogus=1'], "bad flag: Unknown command line flag 'bogus'"),
    'stray argument': ([SMOKE, 'extra'], 'unexpected arguments: extra'),
    'no config': (['--mode=train'], '--config is required'),
    # Config files and variants.
    'missing config file': (['--config=configs/nope.py'],
                            "--config: config file 'configs/nope.py' does not exist"),
    'missing config file with override': (
        ['--config=configs/nope.py', '--config.train.batch_size=3'],
        "--config: config file 'configs/nope.py' does not exist"),
    'config file raises': (['--config={raises}'],
                           'could not load config ' + "'{raises}'" +
                           ': RuntimeError: boom second line'),
    'bad variant': (['--config=configs/default.py:nosuch'],
                    "config: unknown config variant 'nosuch'"),
    # Wrong types.
    'int field given text': ([SMOKE, '--config.train.batch_size=many'],
                             '--config.train.batch_size=many'),
    'bool field given text': ([SMOKE, '--config.dataset.random_flip=maybe'],
                              '--config.dataset.random_flip=maybe'),
    'group given a number': ([SMOKE, '--config.train=3'], '--config.train=3'),
    # Negative and zero sizes.
    'batch size negative': ([SMOKE, '--config.train.batch_size=-4'],
                            'train.batch_size must be > 0, got -4'),
    'image size too small': ([SMOKE, '--config.dataset.image_size=4'],
                             'dataset.image_size must be >= 8'),
    'num_steps negative': ([SMOKE, '--config.train.num_steps=-5'],
                           'train.num_steps must be >= 0'),
    'synthetic size negative': ([SMOKE, '--config.dataset.synthetic.num_train=-5'],
                                'dataset.synthetic.num_train must be > 0, got -5'),
    'reader threads negative': ([SMOKE, '--config.dataset.num_threads=-1'],
                                'dataset.num_threads must be >= 0'),
    'model width zero': ([SMOKE, '--config.model.width=0'], 'model.width must be > 0, got 0'),
    'seed negative': ([SMOKE, '--config.seed=-1'], 'seed must be >= 0, got -1'),
    # Enumerations.
    'mode': ([SMOKE, '--config.mode=trian'], "mode='trian' must be one of"),
    'mode flag': ([SMOKE, '--mode=trian'], 'bad flag: flag --mode=trian'),
    'optimizer name': ([SMOKE, '--config.optimizer.name=adam'],
                       "optimizer.name='adam' must be one of ('sgd', 'adamw')"),
    'schedule': ([SMOKE, '--config.optimizer.schedule=linear'],
                 "optimizer.schedule='linear' must be one of"),
    'on_bad_image': ([SMOKE, '--config.dataset.on_bad_image=ignore'],
                     "dataset.on_bad_image='ignore' must be one of ('error', 'skip')"),
    'label noise kind': ([SMOKE, '--config.dataset.label_noise=random'],
                         "dataset.label_noise='random' must be one of"),
    'model dtype': ([SMOKE, '--config.model.dtype=bfloat17'], "model.dtype='bfloat17'"),
    'model name': ([SMOKE, '--config.model.name=resnet9'],
                   "model.name='resnet9' is not a registered model"),
    # Ranges and combinations.
    'val fraction': ([SMOKE, '--config.dataset.val_fraction=1.5'],
                     'dataset.val_fraction must be in [0, 1), got 1.5'),
    'momentum': ([SMOKE, '--config.optimizer.momentum=1.5'],
                 'optimizer.momentum must be in [0, 1), got 1.5'),
    'cifar resnet depth': ([SMOKE, '--config.model.depth=9'], 'model.depth=9 must be 6n+2'),
    'batch not divisible': ([SMOKE, '--config.train.batch_size=7', '--devices=2'],
                            'train.batch_size=7 is not divisible by the device count 2'),
    'onednn conv on two devices': ([SMOKE, '--devices=2', "--config.model={{'name': 'resnet8', "
                                    "'width': 4, 'conv_impl': 'onednn'}}"],
                                   "model.conv_impl='onednn' runs on one CPU device, not 2"),
    'init_from_step': ([SMOKE, '--config.train.init_from_step=-3'],
                       'train.init_from_step must be a step >= 0, or -1'),
    # Loss terms and model selection.
    'loss term name': ([SMOKE, "--config.loss=(dict(name='crossentropy'),)"],
                       "loss[0].name='crossentropy' is not a registered loss term"),
    'loss term weight': ([SMOKE, "--config.loss=(dict(name='cross_entropy', weight=-1.0),)"],
                         'loss[0].weight must be a number >= 0, got -1.0'),
    'loss k against the data': (  # caught once the data is open, still before any write
        [SMOKE, "--config.loss=(dict(name='cross_entropy'), dict(name='hnc_kd', k=20))"],
        'loss[1] (hnc_kd)'),
    'selection metric': ([SMOKE, '--config.train.selection_metric=acc'],
                         "train.selection_metric='acc' is not a validation metric"),
    # Refinement, fine-tuning, evaluation and analysis.
    'refine rounds': ([SMOKE, '--config.mode=refine', '--config.train.init_from={tmp}/absent',
                       '--config.refine.rounds=0'], 'refine.rounds (T) must be > 0, got 0'),
    'refine variant': ([SMOKE, '--config.mode=refine', '--config.train.init_from={tmp}/absent',
                        '--config.refine.variant=linrx'], "refine.variant='linrx'"),
    'mixup alpha negative': ([SMOKE, '--config.train.mixup_alpha=-0.2'],
                             'config: train.mixup_alpha must be >= 0 (0 = no mixup), got -0.2'),
    'mixup in a refine run': ([SMOKE, '--config.mode=refine',
                               '--config.train.init_from={tmp}/absent',
                               '--config.train.mixup_alpha=1.0'],
                              'train.mixup_alpha=1.0 applies to mode=train'),
    'refine without init_from': ([SMOKE, '--config.mode=refine'],
                                 'mode=refine needs train.init_from'),
    'init_from on an unknown store': (
        [SMOKE, '--config.train.init_from=hdfs://cluster/run'],
        'hdfs://cluster/run: hdfs:// paths are not supported'),
    'missing init_from': ([SMOKE, '--config.train.init_from={tmp}/absent'],
                          "train.init_from='{tmp}/absent' does not exist"),
    'evaluation split': ([SMOKE, '--config.evaluation.split=train'],
                         "evaluation.split='train' must be 'val' or 'test'"),
    'evaluation landscape span': ([SMOKE, '--config.evaluation.landscape_span=0.0'],
                                  'evaluation.landscape_span must be > 0, got 0.0'),
    'analyze a missing run': ([SMOKE, '--config.mode=analyze',
                               "--config.evaluation.runs=('{tmp}/absent',)"],
                              "'{tmp}/absent' is not a camjax run (no config.json)"),
    'analyze groups of the wrong length': (
        [SMOKE, '--config.mode=analyze', "--config.evaluation.runs=('{tmp}/a','{tmp}/b')",
         "--config.evaluation.groups=('ce',)"],
        'evaluation.groups has 1 labels for 2 runs'),
}


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """{'tmp': a directory with only the test's config files, 'raises': one of
    them}. Also prepares the smoke config's synthetic data, so that a case
    reaching the data sees no TFDS progress bars on stderr."""
    import importlib.util

    from camjax.data import open_splits
    spec = importlib.util.spec_from_file_location('default_config',
                                                  os.path.join(ROOT, 'configs', 'default.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    open_splits(module.get_config('smoke').dataset)
    tmp = tmp_path_factory.mktemp('bad-config')
    raises = tmp / 'raises.py'
    raises.write_text(RAISES)
    return {'tmp': str(tmp), 'raises': str(raises)}


@pytest.fixture
def cli(monkeypatch, capsys):
    """`cli(*args)` runs `python -m camjax.main ARGS` in this process and
    returns (exit status, stderr). `--devices=N` (not a camjax flag) makes
    JAX report N devices. absl's FLAGS are global: the `--config.*` flags an
    earlier parse defined are removed and FLAGS is unparsed again after
    each run, and left as it was found."""
    import jax
    from absl import logging

    from camjax import main as camjax_main
    flag_values = camjax_main.FLAGS
    defined, was_parsed = set(flag_values), flag_values.is_parsed()
    verbosity = logging.get_verbosity()

    def reset():
        for name in set(flag_values) - defined:
            if name.startswith('config.'):
                delattr(flag_values, name)
        flag_values.unparse_flags()
        if was_parsed:
            flag_values.mark_as_parsed()
        logging.set_verbosity(verbosity)

    def run(*args):
        devices = [a for a in args if a.startswith('--devices=')]
        if devices:
            count = int(devices[0].split('=')[1])
            monkeypatch.setattr(jax, 'device_count', lambda *_: count)
        argv = ['camjax', *(a for a in args if a not in devices)]
        # config_flags finds the --config.* overrides in sys.argv, not in argv.
        monkeypatch.setattr(sys, 'argv', argv)
        capsys.readouterr()
        try:
            camjax_main.main(camjax_main.parse_flags(argv))
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            reset()
        return code, capsys.readouterr().err

    yield run
    reset()


def _check_one_line(code, stderr, expected):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]
    line = lines[0]
    assert line.startswith('camjax: error: ') and expected in line, line
    assert '\\n' not in line and 'Traceback' not in stderr, line
    return line


@pytest.mark.parametrize('case', list(CASES))
def test_bad_command_line_is_one_line_exit_2_and_writes_nothing(case, cli, files, tmp_path):
    args, expected = CASES[case]
    workdir = tmp_path / 'run'
    code, stderr = cli(*(a.format(**files) for a in args), f'--workdir={workdir}')
    _check_one_line(code, stderr, expected.format(**files))
    assert not workdir.exists() and os.listdir(tmp_path) == []
    assert sorted(os.listdir(files['tmp'])) == ['raises.py']


def test_the_suggested_model_group_override_works(cli, tmp_path):
    """The message for a model field the config file leaves out shows the
    whole-group override; that override is accepted (the run then stops at
    the next bad field)."""
    workdir = tmp_path / 'run'
    _, stderr = cli('--config=configs/default.py', '--config.model.dtype=bfloat16',
                    f'--workdir={workdir}')
    group = stderr.split('--config.model="', 1)[1].rsplit('"', 1)[0]
    code, stderr = cli('--config=configs/default.py',
                       '--config.model=' + group.replace('<value>', "'bfloat16'"),
                       '--config.train.num_steps=-5', f'--workdir={workdir}')
    _check_one_line(code, stderr, 'train.num_steps must be >= 0')
    assert not workdir.exists()


def test_in_process_runs_match_the_real_command_line(cli, tmp_path):
    """The in-process helper gives the real CLI's exact stderr and status;
    and `--evaluation.*`, whose overrides absl reads at import, so only a
    fresh process can test them."""
    same = [SMOKE, '--config.train.lerning_rate=1', f'--workdir={tmp_path}/a']
    evaluation = [SMOKE, '--evaluation.split=train', f'--workdir={tmp_path}/b']
    typo = [SMOKE, '--evaluation.splt=val', f'--workdir={tmp_path}/c']
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
    procs = [subprocess.Popen([sys.executable, '-m', 'camjax.main', *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in (same, evaluation, typo)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    assert results[0] == cli(*same)
    _check_one_line(*results[1], "evaluation.split='train' must be 'val' or 'test'")
    _check_one_line(*results[2], "unknown config key 'evaluation.splt'; did you mean "
                                 "'evaluation.split'?")
    assert os.listdir(tmp_path) == []
