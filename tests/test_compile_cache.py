"""The persistent compilation cache of command-line runs (camjax/compile_cache.py):
where it lives, the off switch, and that a repeated run compiles nothing."""

import os
import subprocess
import sys

from conftest import ROOT

from camjax import compile_cache


def test_where_the_cache_lives():
    home = os.path.expanduser('~/.cache/camjax/xla')
    assert compile_cache.cache_dir({}) == home
    assert compile_cache.cache_dir({'JAX_COMPILATION_CACHE_DIR': '/j'}) == '/j'
    both = {'CAMJAX_CACHE': '/c', 'JAX_COMPILATION_CACHE_DIR': '/j'}
    assert compile_cache.cache_dir(both) == '/c'
    for off in ('off', 'OFF', '0', 'false'):
        assert compile_cache.cache_dir({'CAMJAX_CACHE': off,
                                        'JAX_COMPILATION_CACHE_DIR': '/j'}) is None


def _run(workdir, cache):
    env = dict(os.environ, CAMJAX_CACHE=str(cache))
    env.pop('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', None)
    result = subprocess.run(
        [sys.executable, '-m', 'camjax.main', '--config=configs/linear_synthetic.py:smoke',
         f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(os.listdir(cache)) if os.path.isdir(cache) else set()


def test_a_repeated_run_compiles_nothing_and_off_caches_nothing(tmp_path):
    cache = tmp_path / 'xla'
    first = _run(tmp_path / 'a', cache)
    assert len(first) >= 3  # at least init, the train step and the eval step
    # Every program a run compiles is stored (no minimum compile time), so a
    # second run that adds no entry took every program from the cache.
    assert _run(tmp_path / 'b', cache) == first
    off = tmp_path / 'off'
    _run(tmp_path / 'c', 'off')
    assert not off.exists() and not (tmp_path / 'c' / 'off').exists()
