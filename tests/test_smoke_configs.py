"""Every shipped config's smoke variants train 2 steps end to end, so no
config rots; and variant words are checked."""

import glob
import importlib.util
import os

import pytest
from conftest import ROOT, run_cli

from camjax.config_schema import validate
from camjax.config_variants import choose
from camjax.data import open_splits
from camjax.errors import ConfigError
from camjax.objectives import validate_terms
from camjax.runlog import read_records
from camjax.train import train_and_evaluate


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))
SMOKE_CASES = [(os.path.basename(p), arg) for p in CONFIGS for arg in _load(p).SMOKE]


def test_every_config_has_smoke_variants():
    assert {os.path.basename(p) for p in CONFIGS} == {name for name, _ in SMOKE_CASES}


@pytest.mark.parametrize('name,arg', SMOKE_CASES, ids=[f'{n}:{a}' for n, a in SMOKE_CASES])
def test_smoke_variant_trains_two_steps(name, arg, tmp_path):
    config = _load(os.path.join(ROOT, 'configs', name)).get_config(arg)
    validate(config, num_devices=1)
    splits = open_splits(config.dataset)
    validate_terms(config.loss, num_classes=splits.num_classes, multilabel=splits.multilabel)
    state, _ = train_and_evaluate(config, str(tmp_path), splits)
    assert int(state.step) == 2
    evals = [r for r in read_records(str(tmp_path)) if r['kind'] == 'eval']
    for term in config.loss:
        assert f'loss/{term["name"]}' in evals[-1]['test']


def test_variant_words_are_checked():
    options = {'model': ('a', 'b'), 'loss': ('x', 'y')}
    assert choose('b,smoke', options) == ({'model': 'b', 'loss': 'x'}, True)
    assert choose(None, options) == ({'model': 'a', 'loss': 'x'}, False)
    with pytest.raises(ConfigError, match="unknown config variant 'c'"):
        choose('c', options)


def test_cli_unknown_variant_is_one_line(tmp_path):
    result = run_cli('--config=configs/imagenet_hnc.py:resnet999', f'--workdir={tmp_path}/r')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip().splitlines()[-1]]
    assert "unknown config variant 'resnet999'" in result.stderr
