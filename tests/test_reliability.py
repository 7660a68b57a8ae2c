"""Reliability of a run: stop requests, the non-finite guard, the workdir
lock and safe config changes on an existing workdir. (Kills at random moments
are in test_resume_kill.py; a stop request in the loop, and determinism, in
test_train.py; a stop across two processes in test_multiprocess.py.)"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, run_cli, small_config

from camjax import lock
from camjax.checkpoint import restore_model_variables, saved_steps
from camjax.data import open_splits
from camjax.errors import CamjaxError
from camjax.rundir import read_records
from camjax.training import interrupt, nonfinite, train
from camjax.training.state import TrainState


@pytest.fixture(scope='module')
def splits():
    return open_splits(small_config().dataset)


# -- stop requests (SIGTERM / SIGINT; the loop's part is in test_train.py) ---
def test_signals_become_a_stop_request_and_a_second_one_kills():
    script = textwrap.dedent('''
        import os, signal, sys
        from camjax.training.interrupt import StopSignals
        with StopSignals() as stops:
            assert stops.requested(1) is None
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
            print(stops.requested(2), flush=True)
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # the second: default action
            print('survived', flush=True)
    ''')
    for name, signum in (('SIGINT', 2), ('SIGTERM', 15)):
        result = subprocess.run([sys.executable, '-c', script, name], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.stdout.split() == [name], result
        assert result.returncode == -signum and 'Traceback' not in result.stderr


@pytest.mark.parametrize('name,status', [('SIGTERM', 0), ('SIGINT', 130)])
def test_the_command_line_reports_a_stop_in_one_line(name, status, monkeypatch, capsys):
    from camjax import main

    def stopped_run(*args, **kwargs):
        raise interrupt.Stopped(name, 12)

    from camjax.config.schema import base_config  # mode 'train': a loop takes signals
    monkeypatch.setattr(main, 'command_line_config', lambda: (base_config(), 'w', {}))
    monkeypatch.setattr(main, 'run', stopped_run)
    monkeypatch.setattr(sys, 'argv', ['main.py', '--config=configs/default.py'])
    with pytest.raises(SystemExit) as info:
        main.main(['main.py'])
    assert info.value.code == status
    assert capsys.readouterr().err == (
        f'camjax: stopped by {name} at step 12, after saving a checkpoint; resume with: '
        'python -m camjax.main --config=configs/default.py\n')


# -- the non-finite guard -----------------------------------------------------
def _toy_step(state, batch):
    params = {'w': state.params['w'] - batch['g']}
    new = state.replace(step=state.step + 1, params=params)
    return new, {'loss': jnp.sum(params['w']), 'loss/a': jnp.sum(batch['g'])}


def _toy_state():
    return TrainState(step=jnp.int32(0), params={'w': jnp.ones(3)}, batch_stats={},
                      opt_state={})


@pytest.mark.parametrize('skip', [False, True])
def test_guard_flags_a_non_finite_step_and_skip_keeps_the_old_state(skip):
    step = jax.jit(nonfinite.guard_step(_toy_step, skip=skip))
    good, m = step(_toy_state(), {'g': jnp.full(3, 0.5)})
    assert float(m[nonfinite.FLAG]) == 0 and float(m['loss']) == 1.5
    bad, m = step(good, {'g': jnp.array([0.0, jnp.nan, 0.0])})
    assert float(m[nonfinite.FLAG]) == 1 and float(m['nonfinite/loss/a']) == 1
    assert float(m['nonfinite/update']) == 1 and float(m['loss']) == 0  # zeroed
    assert int(bad.step) == 2
    if skip:
        np.testing.assert_array_equal(bad.params['w'], good.params['w'])
    else:
        assert np.isnan(bad.params['w'][1])


def test_the_failure_message_names_the_terms_not_the_total():
    flags = {'nonfinite': 2.0, 'nonfinite/loss': 2.0, 'nonfinite/loss/hnc_kd': 1.0,
             'nonfinite/loss/cross_entropy': 0.0, 'nonfinite/update': 2.0}
    assert nonfinite.failure_message(flags, first_step=11, last_step=20, last_checkpoint=10) == (
        'non-finite loss/hnc_kd in steps 11-20 (2 bad step(s)); stopped without saving, and '
        'the newest checkpoint, step 10, is from before it; lower the learning rate, or set '
        'train.skip_nonfinite_updates=True to skip such steps')


def _diverging(**overrides):
    # The learning rate jumps x1e9 at step 5 (epoch 5/13.5 of this split).
    return small_config(**{'train.num_steps': 10, 'train.log_every': 4,
                           'train.checkpoint_every': 2, 'train.eval_every': 0,
                           'optimizer.schedule': 'step', 'optimizer.step_epochs': (0.35,),
                           'optimizer.step_factor': 1e9, **overrides})


def test_a_diverging_run_stops_before_saving_anything_non_finite(tmp_path, splits):
    workdir = str(tmp_path / 'run')
    with pytest.raises(nonfinite.NonFiniteError) as info:
        train.train_and_evaluate(_diverging(), workdir, splits)
    message = str(info.value)
    found = re.match(r'non-finite (loss/cross_entropy|update \(gradients; the loss was '
                     r'finite\)) in steps (\d+)-(\d+) ', message)
    assert found and '\n' not in message, message
    first, last = int(found[2]), int(found[3])
    newest = max(saved_steps(workdir))
    assert newest < first <= last and f'step {newest}, is from before it' in message
    # Every save is finite, and so is everything in metrics.jsonl.
    for step in saved_steps(workdir):
        params = restore_model_variables(workdir, step)['params']
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    assert all(r['step'] < first for r in read_records(workdir))
    best = os.path.join(workdir, 'best')
    assert all(s < first for s in saved_steps(best))


def test_skip_nonfinite_updates_counts_them_and_keeps_the_run_finite(tmp_path, splits):
    workdir = str(tmp_path / 'run')
    state, _ = train.train_and_evaluate(
        _diverging(**{'train.skip_nonfinite_updates': True}), workdir, splits)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
    windows = [r for r in read_records(workdir) if r['kind'] == 'train']
    skipped = [r['skipped_updates'] for r in windows]
    assert sum(skipped) > 0 and windows[-1]['skipped_updates_total'] == sum(skipped)
    assert skipped[0] == 0 and np.isfinite(windows[0]['loss'])
    assert int(state.step) == 10


# -- the workdir lock ---------------------------------------------------------
HOLD = textwrap.dedent('''
    import sys, time
    from camjax import lock
    lock.acquire(sys.argv[1])
    print('held', flush=True)
    time.sleep(120)
''')


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/run's lock."""
    workdir = str(tmp_path / 'run')
    proc = subprocess.Popen([sys.executable, '-c', HOLD, workdir], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'held'
    yield workdir, proc
    proc.kill()
    proc.wait()


def test_a_second_process_is_refused_naming_the_holder(holder):
    workdir, proc = holder
    with pytest.raises(CamjaxError, match=f'in use by PID {proc.pid} on host '
                                          f'{socket.gethostname()}'):
        lock.acquire(workdir)


def test_a_lock_left_by_a_killed_process_is_taken_over(holder, capsys):
    workdir, proc = holder
    proc.kill()
    proc.wait()
    lock.acquire(workdir)
    try:
        assert f'taking over the lock of PID {proc.pid}' in capsys.readouterr().err
        with open(os.path.join(workdir, lock.LOCK)) as f:
            assert json.load(f)['pid'] == os.getpid()
        lock.acquire(workdir)  # re-entrant in one process
        lock.release(workdir)
        assert os.path.exists(os.path.join(workdir, lock.LOCK))
    finally:
        lock.release(workdir)
    assert not os.path.exists(os.path.join(workdir, lock.LOCK))


def test_a_lock_naming_another_host_is_refused(tmp_path):
    workdir = tmp_path / 'run'
    workdir.mkdir()
    (workdir / lock.LOCK).write_text(json.dumps({'pid': 1, 'host': 'elsewhere'}))
    with pytest.raises(CamjaxError, match='PID 1 on host elsewhere .*another host'):
        lock.acquire(str(workdir))


def test_the_command_line_is_refused_before_writing_config_json(holder):
    workdir, proc = holder
    result = run_cli('--config=configs/default.py', f'--workdir={workdir}')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f'camjax: error: {workdir} is in use by PID {proc.pid} on host '
        f'{socket.gethostname()} (since {_started(workdir)}); wait for that run to end or '
        'stop it, or pick another --workdir')
    assert sorted(os.listdir(workdir)) == [lock.LOCK]


def _started(workdir):
    with open(os.path.join(workdir, lock.LOCK)) as f:
        return json.load(f)['started']


# -- config changes on an existing workdir -----------------------------------
def test_training_longer_is_accepted_and_recorded(tmp_path, splits):
    workdir = str(tmp_path / 'run')
    config = small_config(**{'train.num_steps': 4, 'dataset.num_threads': 1})
    train.train_and_evaluate(config, workdir, splits)
    longer = small_config(**{'train.num_steps': 6, 'train.log_every': 2,
                             'dataset.num_threads': 2})
    state, _ = train.train_and_evaluate(longer, workdir, splits)
    assert int(state.step) == 6
    records = read_records(workdir)
    change = [r for r in records if r['kind'] == 'config_change']
    assert change == [{'kind': 'config_change', 'changes': {
        'dataset.num_threads': [1, 2], 'train.log_every': [4, 2], 'train.num_steps': [4, 6]}}]
    bests = [r for r in records if r['kind'] == 'best']
    assert len(bests) == 2 and records.index(bests[1]) > records.index(change[0])
    with open(os.path.join(workdir, 'config.json')) as f:
        assert json.load(f)['train']['num_steps'] == 6
    other = small_config(**{'train.num_steps': 6, 'seed': 3, 'optimizer.learning_rate': 1.0})
    with pytest.raises(CamjaxError, match=r'optimizer.learning_rate: 0.05 -> 1.0; seed: 0 -> 3'):
        train.train_and_evaluate(other, workdir, splits)
