"""train.grad_accum_steps: one update from N microbatches equals one step on
the whole batch (no BatchNorm, float32, CPU), and works in train and refine."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import small_config

from camjax import objectives
from camjax.config.schema import validate
from camjax.data import open_splits
from camjax.errors import ConfigError
from camjax.models import MODELS
from camjax.parallel import make_mesh
from camjax.rundir import read_records
from camjax.training import accumulate, refine, train
from camjax.training.state import init_state

NORM = {'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25)}
# CE, HNC (a top-k over the CAMs) and a CAM-weight penalty: every kind of term.
TERMS = (dict(name='cross_entropy'), dict(name='hnc_kd', weight=0.5, k=3),
         dict(name='classifier_penalty', weight=1e-3, form='l1'))


def _batch(n=16, size=16, classes=6, seed=0):
    rng = np.random.default_rng(seed)
    return {'image': jnp.asarray(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)),
            'label': jnp.asarray(rng.integers(0, classes, n, dtype=np.int32))}


def test_microbatches_interleave_so_each_device_feeds_every_one():
    parts = accumulate.microbatches({'x': jnp.arange(8)}, 4)['x']
    np.testing.assert_array_equal(parts, [[0, 4], [1, 5], [2, 6], [3, 7]])


@pytest.mark.parametrize('steps', [2, 4])
def test_accumulated_update_equals_one_step_on_the_whole_batch(steps):
    model = MODELS['vgg16_gap'](num_classes=6, layers=(8, 'M', 8), extra_conv=8)
    tx = optax.sgd(0.1, momentum=0.9)
    mesh = make_mesh()
    objective = objectives.build_objective(TERMS)
    results = {}
    for n in (1, steps):
        state = init_state(model, tx.init, seed=0, image_size=16, mesh=mesh)
        step = train.make_train_step(model, objective, tx, mesh=mesh, grad_accum_steps=n, **NORM)
        for i in range(2):  # a second step shows the optimizer state is the same too
            state, metrics = step(state, _batch(seed=i))
        results[n] = jax.device_get((state.params, metrics))
    (params_1, metrics_1), (params_n, metrics_n) = results[1], results[steps]
    for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_n), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert any(not np.array_equal(a, b) for a, b in  # not trivially the same computation
               zip(jax.tree.leaves(params_1), jax.tree.leaves(params_n), strict=True))
    for key in ('loss', 'loss/cross_entropy', 'loss/hnc_kd', 'accuracy'):
        assert metrics_n[key] == pytest.approx(metrics_1[key], rel=1e-5, abs=1e-6), key


def test_linr_step_accumulates_with_one_draw_per_microbatch():
    model = MODELS['vgg16_gap'](num_classes=6, layers=(8, 'M', 8), extra_conv=8)
    tx = optax.sgd(0.01)
    mesh = make_mesh()
    cfg = small_config().refine
    cfg.variant = 'linr'
    out = {}
    for n in (1, 2):
        state = init_state(model, lambda p: {'linr': tx.init(p)}, seed=0, image_size=16,
                           mesh=mesh)
        step = refine.make_linr_step(model, tx, cfg, seed=0, mesh=mesh, multilabel=False,
                                     grad_accum_steps=n, **NORM)
        state, metrics = step(state, _batch())
        out[n] = jax.device_get((state.params, metrics['loss']))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(out[2]))
    # Different mixing draws: a different, but nearby, update.
    assert out[2][1] != out[1][1]


def test_train_and_refine_run_with_accumulation(tmp_path):
    config = small_config(**{'train.grad_accum_steps': 2, 'train.num_steps': 4})
    validate(config, num_devices=1)
    splits = open_splits(config.dataset)
    state, _ = train.train_and_evaluate(config, str(tmp_path / 'base'), splits)
    assert int(state.step) == 4
    records = [r for r in read_records(str(tmp_path / 'base')) if r['kind'] == 'train']
    assert records and all(np.isfinite(r['loss']) for r in records)
    refined = small_config(**{'mode': 'refine', 'train.grad_accum_steps': 2,
                              'train.init_from': str(tmp_path / 'base'), 'refine.rounds': 1,
                              'refine.cls_steps': 1, 'refine.linr_steps': 1})
    state, _ = refine.refine(refined, str(tmp_path / 'refined'), splits)
    assert int(state.step) == 2
    rounds = [r for r in read_records(str(tmp_path / 'refined')) if r['kind'] == 'eval']
    assert [r['round'] for r in rounds] == [0, 1] and np.isfinite(rounds[-1]['test']['loss'])


def test_batch_must_split_into_microbatches_over_the_devices():
    config = small_config(**{'train.grad_accum_steps': 3})
    with pytest.raises(ConfigError, match='must split into train.grad_accum_steps=3 '
                                          'microbatches'):
        validate(config, num_devices=1)
    config.train.grad_accum_steps = 0
    with pytest.raises(ConfigError, match='train.grad_accum_steps must be >= 1'):
        validate(config, num_devices=1)
