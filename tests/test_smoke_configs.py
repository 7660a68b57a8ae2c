"""Every shipped config's smoke variants run 2 steps end to end in their mode
(train, refine or sweep), so no config rots; and variant words are checked."""

import copy
import glob
import importlib.util
import os

import pytest
from conftest import ROOT, run_cli

from camjax.checkpoint import Checkpointer
from camjax.config.schema import validate
from camjax.config.variants import choose
from camjax.data import open_splits
from camjax.errors import ConfigError
from camjax.main import run_mode
from camjax.objectives import validate_terms
from camjax.parallel import make_mesh
from camjax.rundir import RunDir, read_records
from camjax.training.state import init_state, model_from_config


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))
SMOKE_CASES = [(os.path.basename(p), arg) for p in CONFIGS for arg in _load(p).SMOKE]


def test_every_config_has_smoke_variants():
    assert {os.path.basename(p) for p in CONFIGS} == {name for name, _ in SMOKE_CASES}


def _untrained_run(config, splits, workdir) -> str:
    """A camjax run holding the freshly initialized model: what a refine or
    sweep smoke variant restores (its train.init_from)."""
    base = copy.deepcopy(config)
    base.mode = 'train'
    RunDir(workdir).create(base)
    model = model_from_config(base, num_classes=splits.num_classes)
    state = init_state(model, lambda params: {}, seed=base.seed,
                       image_size=base.dataset.image_size, mesh=make_mesh())
    ckpt = Checkpointer(workdir, keep=1)
    ckpt.save(0, state, meta={}, data_state={})
    ckpt.wait()
    ckpt.close()
    return workdir


@pytest.mark.parametrize('name,arg', SMOKE_CASES, ids=[f'{n}:{a}' for n, a in SMOKE_CASES])
def test_smoke_variant_trains_two_steps(name, arg, tmp_path):
    config = _load(os.path.join(ROOT, 'configs', name)).get_config(arg)
    splits = open_splits(config.dataset)
    workdir = str(tmp_path / 'run')
    if config.mode != 'train':
        config.train.init_from = _untrained_run(config, splits, str(tmp_path / 'base'))
    validate(config, num_devices=1)
    validate_terms(config.loss, num_classes=splits.num_classes, multilabel=splits.multilabel)
    result = run_mode(config, workdir, splits)
    if config.mode == 'sweep':
        assert [len(row['rounds']) for row in result['rows']] == [config.refine.rounds]
        workdir = os.path.join(workdir, 'step_0')
    else:
        assert int(result[0].step) == 2
    evals = [r for r in read_records(workdir) if r['kind'] == 'eval']
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


LOAD_EVERY_VARIANT = '''
import importlib.util, itertools, json, os, sys
import camjax.main  # the CLI's own module-level work, flags included
from jax._src import xla_bridge
loaded = 0
for path in sys.argv[2:]:
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    options = getattr(module, 'OPTIONS', {})
    words = [','.join(c) for c in itertools.product(*options.values())] or ['']
    for arg in [*words, *(f'{w},smoke' for w in words), *module.SMOKE]:
        module.get_config(arg or None)
        loaded += 1
initialized = xla_bridge.backends_are_initialized()
import jax
jax.distributed.initialize(coordinator_address=f'localhost:{sys.argv[1]}', num_processes=1,
                           process_id=0)
print(json.dumps({'loaded': loaded, 'initialized': initialized,
                  'devices': jax.device_count()}))
'''


def test_loading_every_config_and_variant_touches_no_device():
    """Config files run while flags are parsed, before
    `jax.distributed.initialize`; one that asks JAX for its devices starts
    the backend, and on a pod the initialize then fails. Per-device sizes
    (train.per_device_batch_size) are resolved later instead."""
    import json
    import subprocess
    import sys

    from conftest import free_port
    result = subprocess.run([sys.executable, '-c', LOAD_EVERY_VARIANT, str(free_port()), *CONFIGS],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['loaded'] >= 3 * len(CONFIGS) and report['devices'] >= 1
    assert report['initialized'] is False


def test_per_device_sizes_follow_the_device_count():
    from camjax.config.schema import base_config, resolve_device_sizes
    config = _load(os.path.join(ROOT, 'configs', 'imagenet_linrc.py')).get_config('train')
    resolve_device_sizes(config, num_devices=8)
    assert (config.train.batch_size, config.train.eval_batch_size) == (256, 512)
    validate(config, num_devices=8)
    from camjax.training.optim import peak_learning_rate
    assert peak_learning_rate(config.optimizer, batch_size=256) == pytest.approx(0.1)
    resolve_device_sizes(config, num_devices=2)  # a resolved config resolves again
    assert config.train.batch_size == 64
    with pytest.raises(ConfigError, match=r'train.batch_size=64 is not '
                                          r'train.per_device_batch_size=32 x 4 devices'):
        validate(config, num_devices=4)
    with pytest.raises(ConfigError, match='override train.per_device_batch_size instead'):
        resolve_device_sizes(config, num_devices=2, explicit={'train.batch_size': 64})
    plain = base_config()
    resolve_device_sizes(plain, num_devices=8)  # no per-device fields: unchanged
    assert plain.train.batch_size == 128
