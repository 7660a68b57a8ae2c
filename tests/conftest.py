"""Shared fixtures: a session-wide TFDS data dir for the synthetic dataset and
a small, fast config built on the real schema."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))  # tests reuse bench/fault_injection.py

# One persistent XLA compilation cache for the whole session, shared by the
# CLI subprocesses (they inherit the environment): the suite compiles the same
# small models many times. Set before any test module imports jax.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    import tempfile
    os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='camjax-xla-cache-')
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


@pytest.fixture(scope='session', autouse=True)
def data_dir(tmp_path_factory):
    """Every test prepares synthetic data here, never in the user's cache."""
    path = str(tmp_path_factory.mktemp('tfds'))
    os.environ['CAMJAX_DATA_DIR'] = path
    return path


def small_config(**overrides):
    """A config that trains in seconds: 32px synthetic images, a narrow ResNet-8."""
    from camjax.config.schema import base_config
    config = base_config()
    config.dataset.image_size = 32
    config.dataset.synthetic.num_train = 480
    config.dataset.synthetic.num_test = 120
    config.dataset.num_threads = 1
    config.model = dict(name='resnet8', width=8)
    config.train.batch_size = 32
    config.train.eval_batch_size = 64
    config.train.num_steps = 8
    config.train.log_every = 4
    config.train.eval_every = 4
    config.train.checkpoint_every = 2
    config.optimizer.learning_rate = 0.05
    for path, value in overrides.items():
        node = config
        *parents, leaf = path.split('.')
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def comparable_records(workdir):
    """metrics.jsonl without timings (images/s) and 'resume' markers: what a
    killed and resumed run must reproduce exactly."""
    from camjax.rundir import read_records
    return [{k: v for k, v in r.items() if k != 'images_per_s'}
            for r in read_records(str(workdir)) if r['kind'] != 'resume']


def free_port() -> int:
    """A TCP port on localhost that is free now (for a jax.distributed coordinator)."""
    import socket
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def file_hashes(root) -> dict:
    """{relative path: sha256} of every file under `root`: compare two of
    them to show that nothing under it was written."""
    import hashlib
    out = {}
    for here, _, names in os.walk(root):
        for name in names:
            path = os.path.join(here, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


class StopAt:
    """In place of `camjax.training.interrupt.StopSignals`: as if SIGTERM
    arrived during step `step`."""

    def __init__(self, step):
        self.step = step

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def requested(self, step):
        return 'SIGTERM' if step >= self.step else None


def run_cli(*args, env=None, timeout=600):
    """Run `python -m camjax.main ARGS` from the repo root; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, '-m', 'camjax.main', *args], cwd=ROOT,
                          capture_output=True, text=True, env=full_env, timeout=timeout)


def run_on_cpu_devices(script: str, *, devices: int = 4, timeout=600) -> str:
    """Run a Python `script` in a subprocess that sees `devices` forced CPU
    devices (JAX fixes the device count at start-up); returns its stdout and
    fails the test with its stderr if it exits non-zero."""
    env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
    result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope='session')
def default_run(tmp_path_factory):
    """The README's demo command (configs/default.py on the embedded synthetic
    dataset) at 6 epochs, trained once per session (per test worker; its tests are all in
    test_demo.py): (workdir, seconds, CompletedProcess)."""
    import time
    workdir = tmp_path_factory.mktemp('runs') / 'default'
    start = time.perf_counter()
    # Half the demo's 12 epochs keeps the suite within CI's budget; the tests
    # assert what a short run must already show (well above chance, CAMs that
    # localize, FGSM that hurts).
    result = run_cli('--config=configs/default.py', '--config.train.num_epochs=6',
                     f'--workdir={workdir}', timeout=900)
    return workdir, time.perf_counter() - start, result
