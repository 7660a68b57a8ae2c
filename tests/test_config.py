"""Config validation, and the CLI's handling of bad input: one line on stderr,
exit status 2, and no workdir written."""

import os

import ml_collections
import pytest
from conftest import ROOT, run_cli, small_config

from camjax.config.schema import base_config, validate
from camjax.errors import ConfigError


def _error(config, num_devices=1):
    with pytest.raises(ConfigError) as info:
        validate(config, num_devices=num_devices)
    return str(info.value)


def test_valid_configs_pass():
    validate(base_config(), num_devices=1)
    validate(small_config(), num_devices=8)


def test_unknown_key_is_named():
    config = base_config()
    config.train.bogus = 1
    assert "'train.bogus'" in _error(config)
    config = base_config()
    config.model.widht = 3
    assert "model.'widht'" in _error(config)


def _retyped(section, key, value):
    """A config file that builds its own dict can put any type anywhere."""
    raw = base_config().to_dict()
    raw[section][key] = value
    return ml_collections.ConfigDict(raw)


def test_wrong_type_is_named():
    assert 'train.batch_size must be of type int' in _error(_retyped('train', 'batch_size', '1'))
    assert 'dataset.random_flip must be of type bool' in _error(
        _retyped('dataset', 'random_flip', 1))
    assert 'must be a config group' in _error(_retyped('dataset', 'synthetic', 3))


def test_registry_names():
    config = base_config()
    config.model.name = 'nope'
    assert "model.name='nope' is not a registered model" in _error(config)
    config = base_config()
    config.dataset.name = 'hub:foo'
    assert 'dataset.name' in _error(config)
    config = base_config()
    config.loss = (dict(name='crossentropy'),)
    assert "loss[0].name='crossentropy' is not a registered loss term" in _error(config)
    config = base_config()
    config.loss = (dict(name='cross_entropy', smoothing=0.1),)
    assert "loss[0].'smoothing'" in _error(config)


def test_batch_must_divide_device_count():
    config = base_config()
    config.train.batch_size = 100
    assert 'not divisible by the device count 8' in _error(config, num_devices=8)


def test_out_of_range_values():
    for field, value, expect in [('dataset.val_fraction', 1.0, 'val_fraction'),
                                 ('optimizer.learning_rate', 0.0, 'learning_rate'),
                                 ('optimizer.schedule', 'linear', 'schedule'),
                                 ('train.keep_checkpoints', 0, 'keep_checkpoints')]:
        section, key = field.split('.')
        config = base_config()
        config[section][key] = value
        assert expect in _error(config)


CLI_CASES = {
    'unknown key': ['--config.train.bogus=1'],
    'unknown model': ['--config.model.name=nope'],
    'batch not divisible': ['--config.train.batch_size=7'],
    'missing imagefolder': ['--config.dataset.name=imagefolder:/does/not/exist'],
    'wrong type': ['--config.train.batch_size=many'],
    # Issue 9's table: each was accepted, or failed deep inside, before.
    'negative num_steps': ['--config.train.num_steps=-5'],
    'negative crop_padding': ['--config.dataset.crop_padding=-4'],
    'unknown selection metric': ['--config.train.selection_metric=accuracyy'],
    'missing init_from': ['--config.train.init_from=/no/such/run'],
}


@pytest.mark.parametrize('case', sorted(CLI_CASES))
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    workdir = tmp_path / 'run'
    result = run_cli('--config=configs/default.py', f'--workdir={workdir}', *CLI_CASES[case],
                     # 2 forced CPU devices make an odd batch indivisible.
                     env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('camjax: error:'), result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    assert not os.path.exists(workdir)


def test_cli_reads_loss_terms_written_as_dict_calls(tmp_path):
    """The README's `dict(name=...)` form arrives as a string; it is read as
    the terms it spells (here the run then stops at the bad num_steps)."""
    workdir = tmp_path / 'run'
    result = run_cli('--config=configs/default.py', f'--workdir={workdir}',
                     "--config.loss=(dict(name='cross_entropy', weight=1.0), "
                     "dict(name='hnc_kd', weight=0.5, k=3))", '--config.train.num_steps=-5')
    assert result.returncode == 2
    assert result.stderr.strip() == ('camjax: error: config: train.num_steps must be >= 0 '
                                     '(0: use num_epochs), got -5')
    assert not os.path.exists(workdir)


def test_loss_terms_from_text():
    from camjax.config.schema import parse_loss_terms
    assert parse_loss_terms(("(dict(name='hnc_mse', k=5, weight=0.1),)",)) == (
        {'name': 'hnc_mse', 'k': 5, 'weight': 0.1},)
    assert parse_loss_terms(("dict(name='cross_entropy')",)) == ({'name': 'cross_entropy'},)
    assert parse_loss_terms(({'name': 'cross_entropy'},)) == ({'name': 'cross_entropy'},)
    for bad in ("(dict(name=open('x')),)", 'cross_entropy', '(1, 2)'):
        with pytest.raises(ConfigError, match=r"write each term as dict\(name="):
            parse_loss_terms((bad,))


def test_selection_metric_names_and_direction():
    from camjax.config.schema import selection_direction
    config = base_config()
    config.train.selection_metric = 'loss/cross_entropy'
    validate(config, num_devices=1)
    assert selection_direction('loss') == selection_direction('loss/hnc_kd') == 'lower'
    assert selection_direction('accuracy') == 'higher'
    config.train.selection_metric = 'loss/hnc_kd'  # not a configured term
    assert "train.selection_metric='loss/hnc_kd' is not a validation metric" in _error(config)


def test_cli_refuses_a_workdir_holding_another_config(tmp_path):
    workdir = tmp_path / 'run'
    workdir.mkdir()
    (workdir / 'config.json').write_text('{"seed": 123}')
    result = run_cli('--config=configs/default.py', f'--workdir={workdir}',
                     '--config.dataset.synthetic.num_train=64',
                     '--config.dataset.synthetic.num_test=16')
    assert result.returncode == 2
    assert 'holds a run with a different config' in result.stderr
    assert (workdir / 'config.json').read_text() == '{"seed": 123}'


def test_cli_corrupt_image_is_one_line_and_keeps_the_workdir(tmp_path):
    from PIL import Image
    root = tmp_path / 'folder'
    for split in ('train', 'test'):
        for c in ('a', 'b'):
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new('RGB', (8, 8), (40 * i, 0, 0)).save(root / split / c / f'{i}.png')
    (root / 'train' / 'b' / '2.png').write_bytes(b'garbage')
    workdir = tmp_path / 'run'
    result = run_cli('--config=configs/default.py', f'--workdir={workdir}',
                     f'--config.dataset.name=imagefolder:{root}', '--config.dataset.image_size=8',
                     '--config.dataset.val_fraction=0.0', '--config.model.width=4',
                     '--config.train.batch_size=12', '--config.train.num_steps=3')
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('camjax: error: corrupt image') and '2.png' in last
    assert 'Traceback' not in result.stderr
    assert (workdir / 'config.json').exists()  # what was written stays


@pytest.mark.parametrize('path', sorted(os.listdir(os.path.join(ROOT, 'configs'))))
def test_every_shipped_config_validates(path, monkeypatch):
    """No config in configs/ rots: each loads and passes the schema (paths to
    data that is not on this machine are the only thing allowed to differ)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('cfg', os.path.join(ROOT, 'configs', path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    monkeypatch.setattr('camjax.data.check_dataset_name', lambda name: None)
    from camjax.config.schema import resolve_device_sizes
    validate(resolve_device_sizes(config, num_devices=1), num_devices=1)  # as the CLI does


def test_default_workdir_names_the_variant():
    from camjax.main import default_workdir
    assert default_workdir('configs/default.py') == os.path.join('runs', 'default')
    assert default_workdir('configs/imagenet_hnc.py:resnet152,hnc_kd') == os.path.join(
        'runs', 'imagenet_hnc_resnet152-hnc_kd')


def test_onednn_conv_without_its_library_is_a_config_error(monkeypatch):
    from camjax.config import schema
    from camjax.errors import ConfigError
    from camjax.models import onednn_conv
    monkeypatch.setattr(onednn_conv, '_lib', None)
    monkeypatch.setenv('CAMJAX_ONEDNN_ROOT', '/nonexistent')
    monkeypatch.delenv('CAMJAX_ONEDNN_LIB', raising=False)
    with pytest.raises(ConfigError, match=r"^model.conv_impl='onednn': oneDNN headers/library "
                                          r"not found .*pip install -e '.\[onednn\]'$"):
        schema._check_onednn(1)
