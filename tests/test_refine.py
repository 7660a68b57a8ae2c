"""LinR refinement end to end (LinR paper, Algorithm 1 and Sec. 4.8): the
alternation of phases, LinRNL without labels, resumption mid-round, the
sweep, and one-line errors for bad input."""

import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import numpy as np
import pytest
from conftest import StopAt, comparable_records, run_cli, small_config

from camjax.analysis.sweep import sweet_point
from camjax.checkpoint import saved_steps
from camjax.data import open_splits
from camjax.rundir import RunDir, read_records
from camjax.training import refine as refine_module
from camjax.training.interrupt import Stopped
from camjax.training.refine import refine, sweep
from camjax.training.train import train_and_evaluate


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """A briefly trained run with checkpoints at steps 2, 4 and 6."""
    workdir = str(tmp_path_factory.mktemp('base'))
    config = small_config(**{'train.num_steps': 6, 'train.keep_checkpoints': 10})
    splits = open_splits(config.dataset)
    state, _ = train_and_evaluate(config, workdir, splits)
    return workdir, splits, state


def refine_config(base_dir, **overrides):
    return small_config(**{'mode': 'refine', 'train.init_from': base_dir, 'refine.rounds': 2,
                           'refine.cls_steps': 2, 'refine.linr_steps': 3, 'train.log_every': 1,
                           **overrides})


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _changed(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _train_records(workdir):
    return [r for r in read_records(workdir) if r['kind'] == 'train']


def test_rounds_alternate_phases_and_optimizers(base, tmp_path):
    base_dir, splits, base_state = base
    state, best = refine(refine_config(base_dir), str(tmp_path), splits)
    phases = [r['phase'] for r in _train_records(str(tmp_path))]
    assert phases == ['cls'] * 2 + ['linr'] * 3 + ['cls'] * 2 + ['linr'] * 3
    assert int(state.step) == 10
    # Both optimizers moved (their momentum is non-zero); the weights changed.
    for phase in ('cls', 'linr'):
        assert any(np.any(x != 0) for x in _leaves(state.opt_state[phase])), phase
    assert _changed(state.params, base_state.params)
    evals = [r for r in read_records(str(tmp_path)) if r['kind'] == 'eval']
    assert [r['round'] for r in evals] == [0, 1, 2]
    assert evals[0]['test']['accuracy'] == pytest.approx(
        [r for r in read_records(base_dir) if r['kind'] == 'eval'][-1]['test']['accuracy'])
    assert all(0 <= r['val']['accuracy'] <= 1 for r in evals)
    assert best['kind'] == 'best' and best['step'] in (0, 5, 10)


class _Unlabeled(Sequence):
    """The training split with every label replaced by -1."""

    def __init__(self, source):
        self._source = source

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        return {**self._source[index], 'label': np.int32(-1)}


def test_linrnl_never_reads_labels(base, tmp_path):
    base_dir, splits, base_state = base
    config = refine_config(base_dir, **{'refine.variant': 'linrnl', 'refine.linr_steps': 2})
    labeled, _ = refine(config, str(tmp_path / 'labeled'), splits)
    unlabeled_splits = dataclasses.replace(splits, train=_Unlabeled(splits.train))
    unlabeled, _ = refine(config, str(tmp_path / 'unlabeled'), unlabeled_splits)
    for a, b in zip(_leaves(labeled.params), _leaves(unlabeled.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _changed(unlabeled.params, base_state.params)
    assert {r['phase'] for r in _train_records(str(tmp_path / 'unlabeled'))} == {'linr'}
    # No classification step ran: the classification optimizer is untouched.
    assert all(np.all(x == 0) for x in _leaves(unlabeled.opt_state['cls']))
    assert int(unlabeled.step) == 4


def test_refine_resumes_mid_round_at_the_same_phase(base, tmp_path, monkeypatch):
    base_dir, splits, _ = base
    config = refine_config(base_dir, **{'train.checkpoint_every': 1})
    full, _ = refine(config, str(tmp_path / 'full'), splits)
    killed = str(tmp_path / 'killed')
    refine(config, killed, splits, stop_after_steps=3)  # inside round 1's LinR phase
    resumed, _ = refine(config, killed, splits)
    for a, b in zip(_leaves(full.params), _leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    records = read_records(killed)
    after = records[[r['kind'] for r in records].index('resume') + 1:]
    assert (after[0]['step'], after[0]['round'], after[0]['phase']) == (4, 1, 'linr')
    assert [r['round'] for r in records if r['kind'] == 'eval'] == [0, 1, 2]
    # metrics.jsonl equals the uninterrupted run's in every number but images/s.
    assert comparable_records(killed) == comparable_records(str(tmp_path / 'full'))

    # A stop request (SIGTERM) in round 2's first classification step saves
    # that step, although no save is due there, and the rerun resumes it.
    stopped = str(tmp_path / 'stopped')
    sparse = refine_config(base_dir, **{'train.checkpoint_every': 0})
    with monkeypatch.context() as m:
        m.setattr(refine_module, 'StopSignals', lambda: StopAt(6))
        with pytest.raises(Stopped, match='stopped by SIGTERM at step 6'):
            refine(sparse, stopped, splits)
    assert saved_steps(stopped)[-1] == 6
    resumed, _ = refine(sparse, stopped, splits)
    for a, b in zip(_leaves(full.params), _leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert comparable_records(stopped) == comparable_records(str(tmp_path / 'full'))


def test_collapse_guard_ends_a_collapsing_linr_phase_and_moves_on(base, tmp_path):
    """LinR at lr 0.5 drives the predictions to one class within a few steps
    (the constant solution of f(a x + b y) = a f(x) + b f(y)). The guard ends
    the LinR phase there with one line and a `collapse` record; the round is
    evaluated and the next round's classification phase runs. Off, the
    phase runs all its steps."""
    base_dir, splits, _ = base
    # KL(P1||P2), summed over classes, is mode-seeking: it collapses onto one
    # class (docs/results.md, study 7); the defaults' KL(P2||P1) flattens
    # the predictions instead.
    overrides = {'refine.rounds': 2, 'refine.cls_steps': 1, 'refine.linr_steps': 24,
                 'refine.collapse_window': 4, 'refine.linr_optimizer.learning_rate': 0.5,
                 'refine.direction': 'p1_p2', 'refine.reduction': 'sum',
                 'refine.p2_batchnorm': 'running', 'refine.running_stats_from': 'mixed'}
    refine(refine_config(base_dir, **overrides), str(tmp_path / 'guarded'), splits)
    records = read_records(str(tmp_path / 'guarded'))
    collapses = [r for r in records if r['kind'] == 'collapse']
    assert collapses and all(r['top_class_share'] >= 0.9 and r['phase'] == 'linr'
                             for r in collapses)
    first = collapses[0]
    assert first['round'] == 1 and first['phase_step'] % 4 == 0 and first['phase_step'] < 24
    assert 0 <= first['mean_prediction_entropy'] < 0.5 and first['mean_max_prob'] > 0.5
    # After the collapse: the round's eval, then round 2 starts with classification.
    after = records[records.index(first) + 1:]
    assert after[0]['kind'] == 'eval' and after[0]['round'] == 1
    assert next(r for r in after if r['kind'] == 'train')['phase'] == 'cls'
    linr_logs = [r for r in _train_records(str(tmp_path / 'guarded')) if r['phase'] == 'linr']
    assert all('collapse/top_class_share' in r for r in linr_logs)
    assert linr_logs[0]['collapse/top_class_share'] < first['top_class_share']
    state, _ = refine(refine_config(base_dir, **overrides, **{'refine.collapse_guard': False}),
                      str(tmp_path / 'unguarded'), splits)
    assert int(state.step) == 2 * 25
    assert not [r for r in read_records(str(tmp_path / 'unguarded')) if r['kind'] == 'collapse']


def test_reset_optimizer_starts_every_phase_without_momentum(base, tmp_path):
    """One step per phase: after a reset, momentum has nothing to carry, so
    momentum 0.9 with resets ends where momentum 0 does; kept, it does not."""
    base_dir, splits, _ = base

    def final(name, momentum, reset):
        config = refine_config(base_dir, **{'refine.cls_steps': 1, 'refine.linr_steps': 1,
                                            'refine.reset_optimizer': reset})
        config.refine.cls_optimizer.momentum = config.refine.linr_optimizer.momentum = momentum
        return _leaves(refine(config, str(tmp_path / name), splits)[0].params)

    plain = final('plain', 0.0, False)
    for a, b in zip(final('reset', 0.9, True), plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(final('kept', 0.9, False), plain,
                                                      strict=True))


def test_sweep_refines_every_saved_checkpoint(base, tmp_path):
    base_dir, splits, _ = base
    config = refine_config(base_dir, **{'mode': 'sweep', 'refine.variant': 'linrnl',
                                        'refine.linr_steps': 2})
    summary = sweep(config, str(tmp_path), splits)
    rows = summary['rows']
    assert [r['step'] for r in rows] == [2, 4, 6]
    assert [r['epoch'] for r in rows] == pytest.approx([2 / 13, 4 / 13, 6 / 13])
    for row in rows:
        assert set(row['baseline']) == {'train', 'val', 'test'}
        assert [x['round'] for x in row['rounds']] == [1, 2]
    with open(tmp_path / 'sweep.json') as f:
        assert json.load(f)['sweet_point'] == sweet_point(rows)
    for name in ('sweep_scatter.png', 'sweep_rounds.png'):
        with open(tmp_path / name, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert (tmp_path / 'sweep.md').read_text().count('\n|') == 4  # separator + 3 rows


def test_sweet_point_is_the_first_epoch_from_which_refining_always_wins():
    def row(epoch, base_acc, refined):
        return {'step': epoch, 'epoch': epoch, 'baseline': {'test': base_acc},
                'rounds': [{'round': i + 1, 'test': a} for i, a in enumerate(refined)]}

    rows = [row(1, 0.5, [0.6, 0.4]), row(2, 0.6, [0.7, 0.7]), row(3, 0.7, [0.6, 0.8]),
            row(4, 0.7, [0.71, 0.72]), row(5, 0.72, [0.73, 0.75])]
    assert sweet_point(rows) == 4
    assert sweet_point(rows[:3]) is None
    assert sweet_point([row(1, 0.5, [0.6])]) == 1


def _one_line_error(result, needle):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith('camjax: error:') and needle in lines[-1], lines[-1]
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('flags,needle', [
    ([], 'mode=refine needs train.init_from'),
    (['--config.train.init_from={base}', '--config.refine.rounds=0'],
     'refine.rounds (T) must be > 0, got 0'),
    (['--config.train.init_from={base}', '--config.refine.linr_steps=0'],
     'refine.linr_steps (N) must be > 0'),
    (['--config.train.init_from={base}/nowhere'], 'does not exist'),
])
def test_bad_refine_input_is_one_line_and_writes_nothing(base, tmp_path, flags, needle):
    workdir = tmp_path / 'run'
    result = run_cli('--config=configs/default.py:smoke', '--config.mode=refine',
                     *[f.format(base=base[0]) for f in flags], f'--workdir={workdir}')
    _one_line_error(result, needle)
    assert not workdir.exists()


def test_mismatched_checkpoint_names_the_parameter_and_both_shapes(base, tmp_path):
    # configs/default.py:smoke is a ResNet-8 of width 4; the base run has width 8.
    # A bare checkpoint directory has no config.json to take the model from.
    result = run_cli('--config=configs/default.py:smoke', '--config.mode=refine',
                     f'--config.train.init_from={base[0]}/checkpoints',
                     f'--workdir={tmp_path}/run')
    _one_line_error(result, 'has shape')
    message = result.stderr.strip().splitlines()[-1]
    assert 'params/' in message and '(8,)' in message and '(4,)' in message
    assert os.listdir(base[0])  # the source run is untouched


def test_refine_takes_the_model_from_init_from_and_checks_it_before_writing(base, tmp_path):
    """A refine run's model and input come from train.init_from's config.json;
    an explicit override contradicting it is refused, and a bare checkpoint
    directory's shapes are checked from Orbax metadata. Either way the refine
    workdir is never created."""
    from camjax.errors import CamjaxError, ConfigError
    from camjax.main import run
    base_dir, _, _ = base
    workdir = tmp_path / 'refined'
    config = refine_config(base_dir)
    config.model = dict(name='resnet8', width=4)
    with pytest.raises(ConfigError, match=r"model=.*'width': 4.* \(the run has .*'width': 8"):
        run(config, str(workdir), explicit={'model.width': 4})
    config.train.init_from = os.path.join(base_dir, 'checkpoints')
    with pytest.raises(CamjaxError, match='has shape .* the model needs'):
        run(config, str(workdir))
    assert not workdir.exists()
    # The config file's own input fields are not the refined run's: a dataset
    # path that does not exist here does not stop the refinement of a run.
    config = refine_config(base_dir, **{'refine.rounds': 1})
    config.dataset.name = 'imagefolder:/nonexistent/cifar10'
    run(config, str(workdir))
    assert RunDir(str(workdir)).saved_config().dataset.name == 'synthetic'
