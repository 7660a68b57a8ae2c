"""A run killed with SIGKILL (possibly mid-save) and started again with the
same command ends bit-identical to a run that was never interrupted."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, comparable_records, run_cli

from camjax.checkpoint import restore_model_variables
from camjax.errors import CamjaxError

ARGS = ['--config=configs/default.py', '--config.dataset.image_size=32',
        '--config.dataset.synthetic.num_train=480', '--config.dataset.synthetic.num_test=96',
        '--config.model.width=8', '--config.model.stem_stride=1',
        '--config.train.batch_size=32', '--config.train.num_steps=24',
        '--config.train.checkpoint_every=2', '--config.train.eval_every=12',
        '--config.train.log_every=1']


def _saved_steps(workdir):
    path = os.path.join(workdir, 'checkpoints')
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def test_sigkill_then_rerun_is_bit_identical(tmp_path):
    straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
    assert run_cli(*ARGS, f'--workdir={straight}').returncode == 0

    proc = subprocess.Popen([sys.executable, '-m', 'camjax.main', *ARGS, f'--workdir={killed}'],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not any(s >= 6 for s in _saved_steps(killed)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_at_kill = _saved_steps(killed)
    assert steps_at_kill and max(steps_at_kill) < 24, 'the run finished before it was killed'

    result = run_cli(*ARGS, f'--workdir={killed}')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'resumed from step' in result.stdout
    a, b = restore_model_variables(straight), restore_model_variables(killed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # metrics.jsonl equals the uninterrupted run's in every number but images/s.
    assert comparable_records(killed) == comparable_records(straight)


def test_restore_model_variables_errors(tmp_path):
    with pytest.raises(CamjaxError, match='no checkpoint directory'):
        restore_model_variables(str(tmp_path / 'missing'))
    (tmp_path / 'empty' / 'checkpoints').mkdir(parents=True)
    with pytest.raises(CamjaxError, match='no checkpoints in'):
        restore_model_variables(str(tmp_path / 'empty'))
