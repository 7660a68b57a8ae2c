"""FGSM evaluation: the attack's geometry, exact clean accuracy at eps = 0, a
real accuracy drop on a trained model, and masked sums on a sharded mesh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_cpu_devices

from camjax import parallel
from camjax.evaluation import robustness
from camjax.models import build_model, init_variables

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture(scope='module')
def resnet():
    """A tiny ResNet-8 whose running BatchNorm statistics are not the identity,
    so using them (eval mode) is visible."""
    model = build_model('resnet8', num_classes=5, width=4)
    variables = init_variables(model, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    rng = np.random.default_rng(1)
    stats = jax.tree.map(lambda s: s + rng.uniform(0.1, 0.5, s.shape).astype(s.dtype),
                         variables['batch_stats'])
    return model, {'params': variables['params'], 'batch_stats': stats}


def _batch(n=12, real=None, seed=0, size=16, classes=5):
    rng = np.random.default_rng(seed)
    mask = np.ones(n, np.float32)
    if real is not None:
        mask[real:] = 0
    return {'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            'label': rng.integers(0, classes, n).astype(np.int32), 'mask': mask}


# Jitted, since op-by-op dispatch of a ResNet's backward pass takes seconds on CPU.
@functools.partial(jax.jit, static_argnames='model')
def _logits01(model, variables, images01):
    """Reference logits of images in [0, 1], written out independently."""
    x = (images01 - jnp.asarray(MEAN, jnp.float32)) / jnp.asarray(STD, jnp.float32)
    return model.apply(variables, x, train=False)[0]


@functools.partial(jax.jit, static_argnames='model')
def _fgsm_images(model, variables, images01, labels, eps):
    return robustness.fgsm_images(model=model, variables=variables, images=images01,
                                  labels=labels, eps=eps, mean=MEAN, std=STD)


def test_eps_zero_is_clean_accuracy(resnet):
    model, variables = resnet
    batch = _batch(n=16)
    step = robustness.make_fgsm_eval_step(model, eps_values=(0.0, 0.1), mean=MEAN, std=STD,
                                          mesh=parallel.make_mesh(), num_classes=5)
    sums = jax.device_get(step(variables, batch))
    x = batch['image'].astype(np.float32) / 255.0
    clean = np.argmax(_logits01(model, variables, x), -1) == batch['label']
    assert 0 < clean.sum() < 16  # not a degenerate all-right / all-wrong case
    assert float(sums['count']) == 16
    assert float(sums['correct'][0.0]) == clean.sum()
    same = _fgsm_images(model, variables, x, batch['label'], 0.0)
    np.testing.assert_array_equal(same, x)


def test_adversarial_images_move_each_pixel_by_eps(resnet):
    model, variables = resnet
    batch = _batch(n=8, seed=3)
    x = batch['image'].astype(np.float32) / 255.0
    eps = 0.05
    adv = np.asarray(_fgsm_images(model, variables, x, batch['label'], eps))
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    delta = np.abs(adv - x)
    assert delta.max() <= eps + 1e-6

    @jax.jit
    def loss(images):
        logits = _logits01(model, variables, images)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']))

    grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(x)))
    expected = np.clip(x + eps * np.sign(grad), 0, 1)
    np.testing.assert_allclose(adv, expected, atol=1e-6)
    # Every pixel moves by exactly eps, unless clipped or its gradient is 0.
    free = (np.sign(grad) != 0) & (x + eps <= 1) & (x - eps >= 0)
    assert free.mean() > 0.5
    np.testing.assert_allclose(delta[free], eps, atol=1e-6)
    # The step raises the loss it ascends.
    assert float(loss(jnp.asarray(adv))) > float(loss(jnp.asarray(x)))


def _separable_data(n, seed):
    """Two classes of 8x8 images: grey 0.5 -/+ 0.15 times a fixed +-1 pattern,
    plus small noise. Linearly separable with margin 0.15 per pixel, so an L-inf
    step of 0.3 can cross it."""
    rng = np.random.default_rng(seed)
    pattern = np.sign(np.random.default_rng(123).standard_normal((8, 8, 3)))
    labels = rng.integers(0, 2, n)
    images = 0.5 + 0.15 * (2 * labels[:, None, None, None] - 1) * pattern
    images = images + 0.03 * rng.standard_normal(images.shape)
    images = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int32)


def test_trained_linear_model_loses_accuracy_under_attack():
    model = build_model('linear', num_classes=2)
    images, labels = _separable_data(256, seed=0)
    variables = init_variables(model, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    params = variables['params']
    tx = optax.sgd(0.05)
    opt_state = tx.init(params)
    x = (images.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)

    @jax.jit
    def train_step(params, opt_state):
        def loss(p):
            logits = model.apply({'params': p}, x)[0]
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(200):
        params, opt_state = train_step(params, opt_state)

    test_images, test_labels = _separable_data(128, seed=1)
    batch = {'image': test_images, 'label': test_labels, 'mask': np.ones(128, np.float32)}
    mesh = parallel.make_mesh()
    step = robustness.make_fgsm_eval_step(model, eps_values=(0.0, 0.05, 0.3), mean=MEAN,
                                          std=STD, mesh=mesh, num_classes=2)
    acc = robustness.fgsm_accuracy(step, {'params': params}, [batch])
    # The jitted step equals the unjitted body, run op by op.
    eager = robustness.fgsm_sums(model=model, variables={'params': params}, batch=batch,
                                 eps_values=(0.0, 0.05, 0.3), mean=MEAN, std=STD)
    for eps, value in eager['correct'].items():
        assert float(value) == pytest.approx(128 * acc[eps], abs=1e-9)
    assert list(acc) == [0.0, 0.05, 0.3]
    assert acc[0.0] > 0.95
    assert acc[0.3] < 0.1 < acc[0.0]
    assert acc[0.05] <= acc[0.0]


def test_jitted_step_matches_unjitted_reference(resnet):
    model, variables = resnet
    eps_values = (0.0, 0.01, 0.1)
    batches = [_batch(n=8, seed=5), _batch(n=8, real=5, seed=6)]
    step = robustness.make_fgsm_eval_step(model, eps_values=eps_values, mean=MEAN, std=STD,
                                          mesh=parallel.make_mesh(), num_classes=5)
    sums = jax.device_get(step(variables, batches[1]))
    # Reference: fgsm_images per eps, argmax, real examples only.
    real = batches[1]['mask'] > 0
    x = batches[1]['image'].astype(np.float32) / 255.0
    for eps in eps_values:
        adv = _fgsm_images(model, variables, x, batches[1]['label'], eps)
        logits = _logits01(model, variables, adv)
        correct = (np.argmax(logits, -1) == batches[1]['label'])[real].sum()
        assert float(sums['correct'][eps]) == correct
    assert float(sums['count']) == 5
    # fgsm_accuracy sums over batches.
    acc = robustness.fgsm_accuracy(step, variables, batches)
    total = [jax.device_get(step(variables, b)) for b in batches]
    for eps in eps_values:
        want = sum(float(t['correct'][eps]) for t in total) / 13
        assert acc[eps] == pytest.approx(want, abs=1e-12)


def test_rejects_bad_inputs(resnet):
    model, variables = resnet
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match='eps'):
        robustness.make_fgsm_eval_step(model, eps_values=(-0.1,), mean=MEAN, std=STD,
                                       mesh=mesh, num_classes=5)
    with pytest.raises(ValueError, match='classes'):
        robustness.make_fgsm_eval_step(model, eps_values=(0.1,), mean=MEAN, std=STD,
                                       mesh=mesh, num_classes=7)
    batch = _batch(n=4)
    batch['label'] = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match='single-label'):
        robustness.fgsm_sums(model=model, variables=variables, batch=batch, eps_values=(0.1,),
                             mean=MEAN, std=STD)


SHARDED_SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from camjax import parallel
from camjax.evaluation import robustness
from camjax.models import build_model, init_variables

assert jax.device_count() == 4
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
model = build_model('resnet8', num_classes=5, width=4)
variables = init_variables(model, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
rng = np.random.default_rng(0)
batch = {'image': rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
         'label': rng.integers(0, 5, 8).astype(np.int32),
         'mask': np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)}
eps_values = (0.0, 0.02, 0.2)
mesh = parallel.make_mesh()
step = robustness.make_fgsm_eval_step(model, eps_values=eps_values, mean=MEAN, std=STD,
                                      mesh=mesh, num_classes=5)
state = jax.device_put(variables, parallel.replicated(mesh))
sharded = jax.device_put(batch, parallel.batch_sharded(mesh))
assert len(sharded['image'].sharding.device_set) == 4
sums = jax.device_get(step(state, sharded))
# Data-parallel for real: no device gathers the batch (it would run it whole).
assert 'all-gather' not in step.lower(state, sharded).compile().as_text()
# Padding is not counted: flipping the padded labels changes nothing, and the
# result is that of the five real examples alone on one device.
flipped = dict(batch, label=np.where(batch['mask'] > 0, batch['label'], (batch['label'] + 1) % 5))
sums_flipped = jax.device_get(step(state, jax.device_put(flipped, parallel.batch_sharded(mesh))))
real = {k: v[:5] for k, v in batch.items()}
ref = jax.jit(lambda v, b: robustness.fgsm_sums(model=model, variables=v, batch=b,
                                                eps_values=eps_values, mean=MEAN, std=STD))(
    variables, real)
assert float(sums['count']) == 5.0, sums['count']
for eps in eps_values:
    assert float(sums['correct'][eps]) == float(ref['correct'][eps]), eps
    assert float(sums_flipped['correct'][eps]) == float(ref['correct'][eps]), eps
print('ok', {e: float(v) for e, v in sums['correct'].items()})
'''


def test_sharded_step_ignores_padding():
    assert 'ok' in run_on_cpu_devices(SHARDED_SCRIPT)
