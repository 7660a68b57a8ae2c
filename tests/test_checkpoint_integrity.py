"""Checkpoint integrity (issue 10, item 3): a save is complete only when every
item the run saves is present and readable. A damaged newest save is moved
aside with a one-line warning and the previous one is used; with none left
the error says so, and nothing starts fresh silently."""

import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camjax import parallel
from camjax.checkpoint import Checkpointer
from camjax.errors import CamjaxError
from camjax.training.state import TrainState


def _state(step: int) -> TrainState:
    state = TrainState(step=jnp.int32(step), params={'w': jnp.full((4, 3), float(step))},
                       batch_stats={'mean': jnp.arange(3.0) + step},
                       opt_state={'momentum': jnp.full((4, 3), -float(step))})
    return jax.device_put(state, parallel.replicated(parallel.make_mesh()))


def _save_two(workdir: str) -> None:
    ckpt = Checkpointer(workdir, keep=3)
    for step in (1, 2):
        ckpt.save(step, _state(step), meta={'step': step}, data_state={'pos': step})
    ckpt.wait()
    ckpt.close()


def _item(workdir, step, *parts):
    return os.path.join(workdir, 'checkpoints', str(step), *parts)


def _truncate(path):
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])


def _garbage(path):
    with open(path, 'wb') as f:
        f.write(b'\x00garbage\xff' * 8)


DAMAGE = {
    'params deleted': lambda w: shutil.rmtree(_item(w, 2, 'params')),
    'opt_state deleted': lambda w: shutil.rmtree(_item(w, 2, 'opt_state')),
    'data deleted': lambda w: shutil.rmtree(_item(w, 2, 'data')),
    'data truncated': lambda w: _truncate(_item(w, 2, 'data', 'metadata')),
    'data garbage': lambda w: _garbage(_item(w, 2, 'data', 'metadata')),
    'meta emptied': lambda w: open(_item(w, 2, 'meta', 'metadata'), 'w').close(),
    'params _METADATA truncated': lambda w: _truncate(_item(w, 2, 'params', '_METADATA')),
    'params manifest deleted': lambda w: os.remove(_item(w, 2, 'params', 'manifest.ocdbt')),
    'params array data truncated': lambda w: [
        _truncate(p) for p in glob.glob(_item(w, 2, 'params', 'ocdbt.process_0', 'd', '*'))
        + glob.glob(_item(w, 2, 'params', 'd', '*'))],
}


@pytest.mark.parametrize('case', sorted(DAMAGE))
def test_a_damaged_newest_save_falls_back_to_the_previous(case, tmp_path, capsys):
    workdir = str(tmp_path)
    _save_two(workdir)
    DAMAGE[case](workdir)
    ckpt = Checkpointer(workdir, keep=3)
    state, meta, data = ckpt.restore_latest(_state(0))
    ckpt.close()
    assert meta == {'step': 1} and data == {'pos': 1} and int(state.step) == 1
    np.testing.assert_array_equal(state.params['w'], np.full((4, 3), 1.0))
    np.testing.assert_array_equal(state.opt_state['momentum'], np.full((4, 3), -1.0))
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith('camjax: warning: checkpoint ')
    assert '/checkpoints/2 is damaged' in warning[0]
    # Moved aside, never deleted; the manager no longer lists it.
    assert os.path.isdir(os.path.join(workdir, 'damaged', 'checkpoints-2'))
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1']


def test_no_usable_save_is_an_error_not_a_fresh_start(tmp_path):
    workdir = str(tmp_path)
    _save_two(workdir)
    for step in (1, 2):
        shutil.rmtree(_item(workdir, step, 'params'))
    ckpt = Checkpointer(workdir, keep=3)
    with pytest.raises(CamjaxError, match='no usable checkpoint in .*every save was damaged'):
        ckpt.restore_latest(_state(0))
    ckpt.close()
    assert sorted(os.listdir(os.path.join(workdir, 'damaged'))) == ['checkpoints-1',
                                                                    'checkpoints-2']
