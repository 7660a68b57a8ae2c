"""Mixup (train.mixup_alpha; Zhang et al., 2018): the batch it draws, its
targets against the closed form, HNC's negatives under it, alpha -> 0, and
an exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from conftest import small_config

from camjax import objectives, parallel
from camjax.data import open_splits
from camjax.models import build_model
from camjax.rundir import read_records
from camjax.training.mixup import mix
from camjax.training.state import init_state
from camjax.training.train import make_train_step, train_and_evaluate


def test_mix_is_eq_1_drawn_from_seed_and_step():
    images = jax.random.normal(jax.random.key(1), (16, 4, 4, 3))
    labels = jnp.arange(16)  # distinct: the partner labels name the partners j
    mixed, partner, lam = mix(images, labels, alpha=1.0, seed=3, step=7)
    again = mix(images, labels, alpha=1.0, seed=3, step=7)
    assert all(np.array_equal(a, b) for a, b in zip((mixed, partner, lam), again, strict=True))
    assert not np.array_equal(mix(images, labels, alpha=1.0, seed=3, step=8)[0], mixed)
    assert not np.array_equal(mix(images, labels, alpha=1.0, seed=4, step=7)[0], mixed)
    # One lam per batch, folded into [0.5, 1]; the partner j is a permutation.
    assert np.all(lam == lam[0]) and 0.5 <= float(lam[0]) < 1.0
    j = np.asarray(partner)
    np.testing.assert_allclose(mixed, lam[0] * images + (1 - lam[0]) * images[j],
                               rtol=1e-6, atol=1e-6)
    assert sorted(j) == list(range(16)) and (j != np.arange(16)).any()
    # Over many steps lam follows Beta(1, 1) folded: uniform on [0.5, 1], mean 0.75.
    lams = [float(mix(images, labels, alpha=1.0, seed=0, step=s)[2][0]) for s in range(400)]
    assert abs(np.mean(lams) - 0.75) < 0.02 and min(lams) >= 0.5


def _inputs(logits, labels, partner, lam):
    return objectives.objective_inputs(logits, jnp.zeros((logits.shape[0], 2, 2, 3)), labels,
                                       {'head': {'kernel': jnp.zeros((3, logits.shape[1])),
                                                 'bias': jnp.zeros(logits.shape[1])}},
                                       None, mix=(partner, lam))


def test_soft_target_ce_equals_the_lam_weighted_ce(monkeypatch):
    monkeypatch.setattr('camjax.models.CLASSIFIER', 'head')
    logits = jax.random.normal(jax.random.key(0), (8, 10)) * 3
    labels, partner = jnp.arange(8), (jnp.arange(8) + 3) % 10
    lam = jnp.full(8, 0.7)
    for smoothing in (0.0, 0.1):
        objective = objectives.build_objective(
            (dict(name='cross_entropy', label_smoothing=smoothing),))
        total, _ = objective(_inputs(logits, labels, partner, lam), jnp.ones(8))
        # The closed form: CE against the mixed, smoothed target (Zhang et al., Eq. 1).
        soft = 0.7 * jax.nn.one_hot(labels, 10) + 0.3 * jax.nn.one_hot(partner, 10)
        soft = (1 - smoothing) * soft + smoothing / 10
        want = jnp.mean(optax.softmax_cross_entropy(logits, soft))
        np.testing.assert_allclose(total, want, rtol=1e-6)
    # Weighted sigmoid CE (multi-label, HNC paper Eq. 8) mixes the same way.
    multi, multi_partner = (jnp.eye(10)[:8] > 0).astype(jnp.int32), jnp.eye(10)[2:] > 0
    objective = objectives.build_objective((dict(name='weighted_sigmoid_ce'),))
    inputs = {**_inputs(logits, multi, multi_partner.astype(jnp.int32), lam),
              'pos_rate': jnp.full(10, 0.1)}
    total, _ = objective(inputs, jnp.ones(8))
    plain = {k: v for k, v in inputs.items() if not k.startswith('mix_')}
    one, _ = objective(plain, jnp.ones(8))
    other, _ = objective({**plain, 'labels': inputs['mix_labels']}, jnp.ones(8))
    np.testing.assert_allclose(total, 0.7 * one + 0.3 * other, rtol=1e-6)


def test_hnc_counts_both_mixed_classes_as_positives(monkeypatch):
    monkeypatch.setattr('camjax.models.CLASSIFIER', 'head')
    # Class 1 scores highest after the label 0, then 2, 3, ...
    logits = jnp.tile(-jnp.arange(10.0), (2, 1))
    labels, partner = jnp.array([0, 0]), jnp.array([1, 1])
    mixed = objectives.negative_classes(_inputs(logits, labels, partner, jnp.full(2, 0.6)), 3)
    assert mixed[0].tolist() == [[2, 3, 4]] * 2
    # lam = 1 mixed nothing in: the partner's class is a negative again.
    unmixed = objectives.negative_classes(_inputs(logits, labels, partner, jnp.ones(2)), 3)
    assert unmixed[0].tolist() == [[1, 2, 3]] * 2


def _three_steps(alpha):
    model = build_model('resnet8', num_classes=10, width=8)
    objective = objectives.build_objective((dict(name='cross_entropy'),
                                            dict(name='hnc_kd', weight=0.1, k=3)))
    tx = optax.sgd(0.1, momentum=0.9)
    mesh = parallel.make_mesh(jax.devices()[:1])
    state = init_state(model, tx.init, seed=0, image_size=16, mesh=mesh)
    step = make_train_step(model, objective, tx, mean=(0.5,) * 3, std=(0.25,) * 3, mesh=mesh,
                           mixup_alpha=alpha, seed=0)
    rng = np.random.default_rng(0)
    batch = {'image': rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
             'label': rng.integers(0, 10, 16).astype(np.int32)}
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics['loss']))
    return losses, jax.device_get(state.params)


def test_alpha_to_zero_is_no_mixup():
    plain_losses, plain = _three_steps(0.0)
    tiny_losses, tiny = _three_steps(1e-3)  # lam = 1 exactly: Beta(a, a) -> {0, 1}, folded
    mixed_losses, _ = _three_steps(1.0)
    np.testing.assert_allclose(tiny_losses, plain_losses, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(tiny), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert abs(mixed_losses[0] - plain_losses[0]) > 1e-3  # alpha = 1 does mix


def test_mixup_run_resumes_bit_identically(tmp_path):
    config = small_config(**{'train.mixup_alpha': 1.0, 'train.num_steps': 6,
                             'train.checkpoint_every': 2, 'train.eval_every': 6,
                             'train.log_every': 1,
                             'loss': (dict(name='cross_entropy'),
                                      dict(name='hnc_kd', weight=0.1, k=3))})
    splits = open_splits(config.dataset)
    straight, _ = train_and_evaluate(config, str(tmp_path / 'straight'), splits)
    train_and_evaluate(config, str(tmp_path / 'resumed'), splits, stop_after_steps=3)
    resumed, _ = train_and_evaluate(config, str(tmp_path / 'resumed'), splits)  # from step 2
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params),
                    strict=True):
        assert np.array_equal(a, b)

    def losses(name):
        return {r['step']: r['loss'] for r in read_records(str(tmp_path / name))
                if r['kind'] == 'train'}
    assert losses('resumed') == losses('straight')
    plain = small_config(**{'train.num_steps': 1, 'train.log_every': 1,
                            'train.eval_every': 6, 'train.checkpoint_every': 6,
                            'loss': config.loss})
    train_and_evaluate(plain, str(tmp_path / 'plain'), splits)
    assert losses('plain')[1] != losses('straight')[1]  # the mixup run did mix
