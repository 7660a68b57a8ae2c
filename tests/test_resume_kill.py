"""A run stopped at random moments (SIGKILL, possibly mid-save; SIGTERM,
which saves first) and started again with the same command each time
ends bit-identical to a run that was never interrupted. The cycles are
bench/fault_injection.py's."""

import random
import signal

import fault_injection  # bench/, on sys.path through conftest
import pytest

from camjax.checkpoint import restore_model_variables
from camjax.errors import CamjaxError


def test_kills_at_random_points_then_rerun_is_bit_identical(tmp_path):
    straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
    fault_injection.run_straight(straight)
    signals = ['SIGKILL', 'SIGKILL', 'SIGTERM', 'SIGKILL', 'SIGKILL', 'SIGKILL']
    results = fault_injection.run_cycles(killed, signals, rng=random.Random(0))
    assert sum(r['signal'] == 'SIGKILL' for r in results) >= 5, 'the run ended too early'
    for r in results:
        assert r['resumed_from'] == r['newest_complete'], r  # nothing complete was lost
        if r['signal'] == 'SIGKILL':
            assert r['status'] == -signal.SIGKILL, r
            continue
        # SIGTERM / SIGINT: the step is finished and saved; one line, no traceback.
        assert r['status'] == fault_injection.EXIT_STATUS[r['signal']], r
        assert r['lost'] == 0 and 'Traceback' not in r['stderr'], r
        last = r['stderr'].strip().splitlines()[-1]
        assert last.startswith(f'camjax: stopped by {r["signal"]} at step '), last
        assert 'resume with: python -m camjax.main --config=configs/default.py' in last
    same_params, same_metrics = fault_injection.identical(straight, killed)
    assert same_params and same_metrics


def test_restore_model_variables_errors(tmp_path):
    with pytest.raises(CamjaxError, match='no checkpoint directory'):
        restore_model_variables(str(tmp_path / 'missing'))
    (tmp_path / 'empty' / 'checkpoints').mkdir(parents=True)
    with pytest.raises(CamjaxError, match='no checkpoints in'):
        restore_model_variables(str(tmp_path / 'empty'))

