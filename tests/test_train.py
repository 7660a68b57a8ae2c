"""The training system end to end: data parallelism, bit-identical resume,
early stopping with the best checkpoint kept, and the offline default."""

import os

import jax
import numpy as np
import pytest
from conftest import StopAt, comparable_records, run_on_cpu_devices, small_config

from camjax.checkpoint import restore_model_variables, saved_steps
from camjax.data import open_splits
from camjax.rundir import read_records
from camjax.training import train
from camjax.training.interrupt import Stopped
from camjax.training.train import train_and_evaluate

DATA_PARALLEL_SCRIPT = r'''
import jax, numpy as np, optax
from camjax import objectives, parallel
from camjax.models import build_model
from camjax.training.state import init_state
from camjax.training.train import make_train_step

model = build_model('resnet8', num_classes=12, width=8)  # BatchNorm: global batch stats
objective = objectives.build_objective((dict(name='cross_entropy'),))
tx = optax.sgd(0.1, momentum=0.9)
rng = np.random.default_rng(0)
batch = {'image': rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
         'label': rng.integers(0, 12, 16).astype(np.int32)}

def run(devices):
    mesh = parallel.make_mesh(devices)
    state = init_state(model, tx.init, seed=0, image_size=16, mesh=mesh)
    step = make_train_step(model, objective, tx, mean=(0.5,) * 3, std=(0.25,) * 3, mesh=mesh)
    sharded = jax.device_put(batch, parallel.batch_sharded(mesh))
    assert len(sharded['image'].sharding.device_set) == len(devices)
    losses = []
    for _ in range(3):
        state, metrics = step(state, sharded)
        losses.append(float(metrics['loss']))
    return losses, jax.device_get((state.params, state.batch_stats))

assert jax.device_count() == 4
one_losses, one_state = run(jax.devices()[:1])
four_losses, four_state = run(jax.devices())
np.testing.assert_allclose(four_losses, one_losses, atol=1e-5)
for a, b in zip(jax.tree.leaves(four_state), jax.tree.leaves(one_state), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)
print('max loss diff', max(abs(a - b) for a, b in zip(one_losses, four_losses)))
'''


def test_four_devices_match_one_device():
    assert 'max loss diff' in run_on_cpu_devices(DATA_PARALLEL_SCRIPT)


def _tree_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(leaves_a) != len(leaves_b):
        return False
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(leaves_a, leaves_b, strict=True))


def _train_records(workdir):
    return [(r['step'], r['loss']) for r in read_records(workdir) if r['kind'] == 'train']


def test_resume_is_bit_identical(tmp_path, monkeypatch):
    # log windows of 3 steps and checkpoints every 2: the kill after step 5
    # resumes from step 4, inside the window of steps 4-6 (issue 9's table:
    # the first window after a resume was divided by log_every).
    config = small_config(**{'train.num_steps': 10, 'train.log_every': 3,
                             'train.checkpoint_every': 2, 'train.eval_every': 5,
                             'dataset.num_threads': 2})
    splits = open_splits(config.dataset)
    straight, _ = train_and_evaluate(config, str(tmp_path / 'straight'), splits)
    # Determinism: the same config and seed again (2 reader threads) is the same run.
    twice, _ = train_and_evaluate(config, str(tmp_path / 'twice'), splits)
    for field in ('params', 'batch_stats', 'opt_state'):
        assert _tree_equal(getattr(twice, field), getattr(straight, field)), field
    assert comparable_records(tmp_path / 'twice') == comparable_records(tmp_path / 'straight')

    interrupted = str(tmp_path / 'interrupted')
    partial, _ = train_and_evaluate(config, interrupted, splits, stop_after_steps=5)
    assert int(partial.step) == 5 and not _tree_equal(partial.params, straight.params)
    assert [r['step'] for r in read_records(interrupted)] == [3, 5]  # train 3, eval 5
    resumed, _ = train_and_evaluate(config, interrupted, splits)  # newest checkpoint: step 4

    assert int(resumed.step) == int(straight.step) == 10
    for field in ('params', 'batch_stats', 'opt_state'):
        assert _tree_equal(getattr(resumed, field), getattr(straight, field)), field
    # The step-5 eval ran again after the resume; metrics.jsonl is the
    # uninterrupted one's in every number but the timings.
    want = comparable_records(str(tmp_path / 'straight'))
    assert comparable_records(interrupted) == want
    assert [r['step'] for r in want if r['kind'] == 'train'] == [3, 6, 9, 10]
    assert any(r['kind'] == 'resume' and r['step'] == 4 for r in read_records(interrupted))
    # A rerun of a finished run changes nothing.
    again, _ = train_and_evaluate(config, interrupted, splits)
    assert _tree_equal(again.params, straight.params)
    assert comparable_records(interrupted) == want

    # A stop request (SIGTERM) during step 7 saves step 7, off the schedule.
    stopped = str(tmp_path / 'stopped')
    with monkeypatch.context() as m:
        m.setattr(train, 'StopSignals', lambda: StopAt(7))
        with pytest.raises(Stopped) as info:
            train_and_evaluate(config, stopped, splits)
    assert (info.value.signal_name, info.value.step) == ('SIGTERM', 7)
    assert saved_steps(stopped)[-2:] == [6, 7]
    assert not os.path.exists(os.path.join(stopped, 'lock'))  # the lock was let go
    resumed, _ = train_and_evaluate(config, stopped, splits)
    assert _tree_equal(resumed.params, straight.params)
    assert comparable_records(stopped) == want


def test_linear_model_early_stops_and_keeps_best(tmp_path):
    config = small_config(**{'model': {'name': 'linear'}, 'train.num_steps': 0,
                             'train.num_epochs': 40.0, 'train.eval_every': 0,
                             'train.checkpoint_every': 0, 'train.early_stopping_patience': 2,
                             'train.log_every': 0, 'optimizer.learning_rate': 0.02,
                             'optimizer.schedule': 'constant', 'dataset.crop_padding': 0})
    workdir = str(tmp_path / 'linear')
    splits = open_splits(config.dataset)
    state, best = train_and_evaluate(config, workdir, splits)
    evals = [r for r in read_records(workdir) if r['kind'] == 'eval']
    steps_per_epoch = 432 // 32
    assert best['kind'] == 'best' and best['stopped_early']
    assert int(state.step) < 40 * steps_per_epoch  # stopped before the budget
    val = [r['val']['accuracy'] for r in evals]
    assert best['val_score'] == max(val)
    best_index = val.index(max(val))
    assert evals[best_index]['step'] == best['step']
    assert len(evals) - 1 - best_index == 2  # exactly `patience` evals without improvement
    assert best['test']['accuracy'] == evals[best_index]['test']['accuracy']
    assert best['test']['accuracy'] > 2 / splits.num_classes  # chance is 1/12
    kept = restore_model_variables(os.path.join(workdir, 'best'))
    assert np.asarray(kept['params']['classifier']['kernel']).shape == (32 * 32 * 3, 12)


def test_fine_tune_from_another_run(tmp_path):
    """init_from copies every weight, re-initializes a classifier of another
    class count, and names the first mismatching parameter otherwise."""
    import pytest

    from camjax.errors import CamjaxError
    base = small_config(**{'train.num_steps': 2, 'train.eval_every': 2, 'train.log_every': 0})
    splits = open_splits(base.dataset)
    source, _ = train_and_evaluate(base, str(tmp_path / 'source'), splits)

    tuned = small_config(**{'train.num_steps': 1, 'train.eval_every': 1, 'train.log_every': 0,
                            'train.init_from': str(tmp_path / 'source'),
                            'optimizer.learning_rate': 1e-9})
    state, _ = train_and_evaluate(tuned, str(tmp_path / 'tuned'), splits)
    a = jax.tree.leaves(source.params['BasicBlock_0'])
    b = jax.tree.leaves(state.params['BasicBlock_0'])
    assert all(np.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))

    import optax

    from camjax import parallel
    from camjax.models import build_model
    from camjax.training.state import init_state, load_pretrained
    fewer = init_state(build_model('resnet8', num_classes=5, width=8), optax.sgd(0.1).init,
                       seed=3, image_size=32, mesh=parallel.make_mesh())
    loaded = load_pretrained(fewer, str(tmp_path / 'source'), None)
    assert loaded.params['classifier']['kernel'].shape == (32, 5)
    np.testing.assert_array_equal(loaded.params['classifier']['kernel'],
                                  fewer.params['classifier']['kernel'])
    wider = init_state(build_model('resnet8', num_classes=12, width=16), optax.sgd(0.1).init,
                       seed=3, image_size=32, mesh=parallel.make_mesh())
    with pytest.raises(CamjaxError, match=r'params/BasicBlock_0/\S+ has shape \(8,\), '
                                          r'the model needs \(16,\)'):
        load_pretrained(wider, str(tmp_path / 'source'), None)


def test_label_noise_is_stored_with_the_run(tmp_path):
    config = small_config(**{'dataset.label_noise': 'symmetric', 'dataset.label_noise_rate': 0.4,
                             'train.num_steps': 1})
    splits = open_splits(config.dataset)
    train_and_evaluate(config, str(tmp_path), splits)
    saved = np.load(tmp_path / 'label_noise.npz')
    np.testing.assert_array_equal(saved['noisy'], splits.train_label_noise['noisy'])
    flipped = saved['flipped']
    assert 0.3 < flipped.mean() < 0.5
    assert np.all(saved['noisy'][flipped] != saved['original'][flipped])
    assert np.all(saved['noisy'][~flipped] == saved['original'][~flipped])


def test_selection_by_loss_keeps_the_lowest_validation_loss(tmp_path):
    """A loss is lower-is-better: selection used to keep the worst checkpoint."""
    config = small_config(**{'train.selection_metric': 'loss', 'train.eval_every': 2,
                             'train.num_steps': 8})
    _, best = train_and_evaluate(config, str(tmp_path), open_splits(config.dataset))
    evals = [r for r in read_records(str(tmp_path)) if r['kind'] == 'eval']
    losses = [r['val']['loss'] for r in evals]
    assert len(set(losses)) == len(losses) == 4
    assert best['step'] == evals[int(np.argmin(losses))]['step']
    assert best['val_score'] == min(losses)


def test_worker_processes_train_and_resume_as_threads_do(tmp_path):
    import multiprocessing
    config = small_config(**{'train.num_steps': 6, 'train.checkpoint_every': 2,
                             'train.eval_every': 6})
    splits = open_splits(config.dataset)
    threads, _ = train_and_evaluate(config, str(tmp_path / 'threads'), splits)
    workers = small_config(**{'train.num_steps': 6, 'train.checkpoint_every': 2,
                              'train.eval_every': 6, 'dataset.num_workers': 2})
    train_and_evaluate(workers, str(tmp_path / 'mixed'), splits, stop_after_steps=3)
    assert not multiprocessing.active_children()  # the workers were stopped
    resumed, _ = train_and_evaluate(config, str(tmp_path / 'mixed'), splits)  # threads again
    assert _tree_equal(resumed.params, threads.params)
    mixed = comparable_records(tmp_path / 'mixed')
    assert [r for r in mixed if r['kind'] == 'config_change'] == [
        {'kind': 'config_change', 'changes': {'dataset.num_workers': [2, 0]}}]
    assert [r for r in mixed if r['kind'] != 'config_change'] == comparable_records(
        tmp_path / 'threads')
