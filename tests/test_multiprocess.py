"""Two local CPU processes under `jax.distributed` (the CAMJAX_COORDINATOR /
CAMJAX_NUM_PROCESSES / CAMJAX_PROCESS_ID launch; CPU collectives through
gloo, JAX's default): the same training run, step by step, as one process
with as many devices (the training stream depends on the seed and the step,
not the process count), one set of files written, and an exact resume."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
from conftest import ROOT, comparable_records, free_port, run_cli

from camjax.checkpoint import restore_model_variables, saved_steps

# 97 test images in eval batches of 16 per process: shards of 49 and 48, so
# process 0 has 4 batches and process 1 only 3 (and an all-padding fourth):
# both must run the same number of collective steps.
TINY_RUN = ['--config=configs/default.py', '--config.dataset.image_size=32',
            '--config.dataset.synthetic.num_train=480', '--config.dataset.synthetic.num_test=97',
            '--config.model.width=8', '--config.model.stem_stride=1',
            '--config.train.batch_size=32', '--config.train.eval_batch_size=32',
            '--config.train.num_steps=6',
            '--config.train.checkpoint_every=3', '--config.train.eval_every=3',
            '--config.train.log_every=1',
            # hnc_kd too: its top-k over negative CAMs must see the global batch.
            "--config.loss=(dict(name='cross_entropy'), dict(name='hnc_kd', k=3))"]


def _start_two(args):
    """Start `python ARGS` as processes 0 and 1 of one jax.distributed job.
    Output goes to files, not pipes: a process blocked on a full pipe would
    hold up the other's exit (jax.distributed's shutdown waits for both)."""
    port = free_port()
    files = [(tempfile.NamedTemporaryFile('w+'), tempfile.NamedTemporaryFile('w+'))
             for _ in range(2)]
    procs = [subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=out, stderr=err, text=True,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'CAMJAX_COORDINATOR': f'localhost:{port}',
             'CAMJAX_NUM_PROCESSES': '2', 'CAMJAX_PROCESS_ID': str(i)})
        for i, (out, err) in enumerate(files)]
    return procs, files


def _finish(procs, files, timeout=300):
    """[(status, stdout, stderr)] by process, once both have exited."""
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            p.kill()
    results = []
    for p, (out, err) in zip(procs, files, strict=True):
        out.seek(0)
        err.seek(0)
        results.append((p.returncode, out.read(), err.read()))
        out.close()
        err.close()
    return results


def _two_processes(args, timeout=300):
    return _finish(*_start_two(args), timeout=timeout)


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory):
    """TINY_RUN trained by 2 processes x 1 CPU device: (workdir, results)."""
    workdir = tmp_path_factory.mktemp('two') / 'run'
    return workdir, _two_processes(['-m', 'camjax.main', *TINY_RUN, f'--workdir={workdir}'])


def test_two_process_run_equals_one_process_with_two_devices(two_process_run, tmp_path):
    """The CLI's real loop: the same per-step losses, evaluations and final
    parameters from 2 processes x 1 device as from 1 process x 2 devices,
    since both read the same global batches (one global shuffle of the whole
    training split; each process reads and augments its half of each)."""
    workdir, results = two_process_run
    assert [r[0] for r in results] == [0, 0], [r[2][-2000:] for r in results]
    single = tmp_path / 'single'
    one = run_cli(*TINY_RUN, f'--workdir={single}', timeout=300,
                  env={'JAX_PLATFORMS': 'cpu',
                       'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
    assert one.returncode == 0, one.stderr[-2000:]
    pair, alone = comparable_records(workdir), comparable_records(single)
    assert [(r['kind'], r['step']) for r in pair] == [(r['kind'], r['step']) for r in alone]
    losses = [[r['loss'] for r in records if r['kind'] == 'train']
              for records in (pair, alone)]
    assert len(losses[0]) == 6
    np.testing.assert_allclose(losses[0], losses[1], rtol=0, atol=1e-5)
    for a, b in zip(pair, alone, strict=True):
        if a['kind'] == 'eval':
            for split in ('val', 'test'):
                assert a[split]['count'] == b[split]['count']
                np.testing.assert_allclose(a[split]['loss'], b[split]['loss'], rtol=0, atol=1e-5)
    a, b = restore_model_variables(str(workdir)), restore_model_variables(str(single))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-5)


def test_two_process_run_writes_once_and_resumes_bit_identically(two_process_run, tmp_path):
    workdir, results = two_process_run
    assert [r[0] for r in results] == [0, 0], [r[2][-2000:] for r in results]
    # Process 0 logs and writes; process 1 only computes.
    assert 'step 6/6' in results[0][1] and 'step ' not in results[1][1]
    records = comparable_records(workdir)
    assert [r['step'] for r in records if r['kind'] == 'train'] == [1, 2, 3, 4, 5, 6]
    assert [r['kind'] for r in records].count('best') == 1
    evals = [r for r in records if r['kind'] == 'eval']
    assert [r['test']['count'] for r in evals] == [97, 97]  # every image once, no padding
    assert sorted(saved_steps(str(workdir))) == [3, 6]  # each save once, through Orbax
    assert sorted(os.listdir(workdir)) == ['best', 'checkpoints', 'config.json',
                                           'metrics.jsonl']  # the lock is gone
    # Resume in 2-process mode: drop the newest save and run again.
    resumed = tmp_path / 'resumed'
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / 'checkpoints' / '6')
    again = _two_processes(['-m', 'camjax.main', *TINY_RUN, f'--workdir={resumed}'])
    assert [r[0] for r in again] == [0, 0], [r[2][-2000:] for r in again]
    assert 'resumed from step 3' in again[0][1]
    a, b = restore_model_variables(str(workdir)), restore_model_variables(str(resumed))
    assert all(np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    assert comparable_records(resumed) == records


@pytest.mark.parametrize('name', ['SIGTERM', 'SIGINT'])
def test_a_signal_to_one_process_stops_the_run_on_both_at_one_saved_step(name, tmp_path):
    """Preemption of one host (SIGTERM), or Ctrl-C reaching one process
    (SIGINT, passed on to JAX's preemption sync as a SIGTERM): every process
    stops after the same step, saves it once and prints the stop line. The
    signalled process reports its own signal (exit 0 or 130), the other
    SIGTERM (exit 0)."""
    import re
    import signal
    import time
    workdir = tmp_path / 'run'
    args = [*TINY_RUN, '--config.train.num_steps=400', '--config.train.checkpoint_every=200',
            '--config.train.eval_every=200']
    procs, files = _start_two(['-m', 'camjax.main', *args, f'--workdir={workdir}'])
    deadline = time.time() + 240
    while 'step 3/' not in open(files[0][0].name).read() and time.time() < deadline:
        assert all(p.poll() is None for p in procs), 'a process ended before the signal'
        time.sleep(0.1)
    procs[1].send_signal(getattr(signal, name))
    results = _finish(procs, files)
    assert [r[0] for r in results] == [0, 0 if name == 'SIGTERM' else 130], \
        [r[2][-2000:] for r in results]
    stops = [re.search(r'^camjax: stopped by (SIG\w+) at step (\d+), after saving a '
                       r'checkpoint; resume with: ', r[2], re.M) for r in results]
    assert all(stops), [r[2][-1000:] for r in results]
    assert [s[1] for s in stops] == ['SIGTERM', name] and stops[0][2] == stops[1][2]
    step = int(stops[0][2])
    assert 3 <= step < 400 and saved_steps(str(workdir)) == [step]
    assert 'Traceback' not in results[0][2] + results[1][2]
