"""Loss landscapes: filter normalization, an analytic grid, chunk invariance,
the dataset loss (masks, eval-mode BatchNorm, the mesh) and the plots."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_cpu_devices

from camjax.evaluation import landscape as ls
from camjax.models import build_model, init_variables

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture(scope='module')
def resnet():
    model = build_model('resnet8', num_classes=5, width=4)
    variables = init_variables(model, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    rng = np.random.default_rng(1)
    stats = jax.tree.map(lambda s: s + rng.uniform(0.1, 0.5, s.shape).astype(s.dtype),
                         variables['batch_stats'])
    return model, variables['params'], stats


def _batches(num, n, *, size=16, classes=5, seed=0, padding=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        mask = np.ones(n, np.float32)
        mask[n - padding:] = 0
        out.append({'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                    'label': rng.integers(0, classes, n).astype(np.int32), 'mask': mask})
    return out


def test_filter_norms_match_parameters(resnet):
    _, params, _ = resnet
    d = ls.random_direction(params, jax.random.key(1))
    flat_d = jax.tree_util.tree_leaves_with_path(d)
    flat_p = jax.tree.leaves(params)
    assert any(p.ndim == 4 for p in flat_p) and any(p.ndim == 2 for p in flat_p)
    assert any(p.ndim == 1 for p in flat_p)  # BatchNorm scale/bias, classifier bias
    for (path, dv), pv in zip(flat_d, flat_p, strict=True):
        dv, pv = np.asarray(dv, np.float64), np.asarray(pv, np.float64)
        if pv.ndim <= 1:
            assert not dv.any(), path
            continue
        axes = tuple(range(pv.ndim - 1))  # one filter = one output unit
        np.testing.assert_allclose(np.sqrt((dv ** 2).sum(axes)), np.sqrt((pv ** 2).sum(axes)),
                                   rtol=1e-5, err_msg=str(path))
    # Without ignore_bn_and_bias the 1-D entries copy the parameters (Li et al.'s code).
    kept = ls.random_direction(params, jax.random.key(1), ignore_bn_and_bias=False)
    for dv, pv in zip(jax.tree.leaves(kept), flat_p, strict=True):
        if pv.ndim <= 1:
            np.testing.assert_array_equal(dv, pv)
    # Two keys, two directions; one key, one direction.
    other = ls.random_direction(params, jax.random.key(2))
    again = ls.random_direction(params, jax.random.key(1))
    kernel = ('classifier', 'kernel')
    assert not np.allclose(d[kernel[0]][kernel[1]], other[kernel[0]][kernel[1]])
    np.testing.assert_array_equal(d[kernel[0]][kernel[1]], again[kernel[0]][kernel[1]])


def _quadratic():
    rng = np.random.default_rng(0)
    params = {'w': rng.standard_normal((3, 4)).astype(np.float32),
              'b': rng.standard_normal(4).astype(np.float32)}
    target = rng.standard_normal((3, 4)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, (3, 4)).astype(np.float32)
    d1 = {'w': rng.standard_normal((3, 4)).astype(np.float32), 'b': np.ones(4, np.float32)}
    d2 = {'w': rng.standard_normal((3, 4)).astype(np.float32), 'b': np.zeros(4, np.float32)}

    def loss_fn(p):
        return jnp.sum(scale * jnp.square(p['w'] - target)) + jnp.sum(jnp.square(p['b']))

    def analytic(a, b):
        w = params['w'] + a * d1['w'] + b * d2['w']
        bias = params['b'] + a * d1['b'] + b * d2['b']
        return np.sum(scale * (w.astype(np.float64) - target) ** 2) + np.sum(bias ** 2.0)

    return loss_fn, params, (d1, d2), analytic


def test_quadratic_grid_is_analytic_and_chunk_invariant():
    loss_fn, params, directions, analytic = _quadratic()
    alphas, betas = np.linspace(-1, 1, 7), np.linspace(-0.5, 2, 5)
    grid = np.asarray(ls.loss_grid(loss_fn=loss_fn, params=params, directions=directions,
                                   alphas=alphas, betas=betas, chunk=4))
    assert grid.shape == (7, 5)
    want = np.array([[analytic(a, b) for b in betas] for a in alphas])
    np.testing.assert_allclose(grid, want, rtol=1e-5)
    for chunk in (1, 3, 35, 100):
        other = ls.loss_grid(loss_fn=loss_fn, params=params, directions=directions,
                             alphas=alphas, betas=betas, chunk=chunk)
        np.testing.assert_array_equal(other, grid)


def test_dataset_loss_respects_masks_and_running_stats(resnet):
    model, params, stats = resnet
    batches = _batches(2, 6, padding=2)
    loss_fn = ls.make_dataset_loss_fn(model, stats, batches, MEAN, STD)
    total, count = 0.0, 0.0
    apply = jax.jit(lambda x: model.apply({'params': params, 'batch_stats': stats}, x,
                                          train=False)[0])
    for batch in batches:
        x = (batch['image'] / 255.0 - np.float32(MEAN)) / np.float32(STD)
        logits = apply(x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
        total += float(jnp.sum(ce * batch['mask']))
        count += float(batch['mask'].sum())
    value = float(jax.jit(loss_fn)(params))
    assert value == pytest.approx(total / count, rel=1e-5)
    # Padded labels do not matter.
    changed = [dict(b, label=np.where(b['mask'] > 0, b['label'], 0)) for b in batches]
    changed_fn = ls.make_dataset_loss_fn(model, stats, changed, MEAN, STD)
    assert float(jax.jit(changed_fn)(params)) == pytest.approx(value, abs=1e-6)

    # The grid center is loss_fn(params), on any chunk size.
    d = (ls.random_direction(params, jax.random.key(1)),
         ls.random_direction(params, jax.random.key(2)))
    coeffs = np.linspace(-0.5, 0.5, 3)
    grid = np.asarray(ls.loss_grid(loss_fn=loss_fn, params=params, directions=d,
                                   alphas=coeffs, betas=coeffs, chunk=4))
    assert grid[1, 1] == pytest.approx(value, abs=1e-6)
    assert np.all(np.isfinite(grid)) and grid.std() > 1e-3
    chunk9 = ls.loss_grid(loss_fn=loss_fn, params=params, directions=d, alphas=coeffs,
                          betas=coeffs, chunk=9)
    np.testing.assert_allclose(chunk9, grid, rtol=1e-6)
    with pytest.raises(ValueError, match='single-label'):
        ls.make_dataset_loss_fn(model, stats, [dict(batches[0], label=np.ones((6, 5)))],
                                MEAN, STD)


def _noisy_linear_data(n, seed):
    """Three overlapping classes of 4x4 images: not separable, so cross-entropy
    has a finite minimizer that training converges to (the loss is convex)."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(7).standard_normal((3, 4, 4, 3))
    labels = rng.integers(0, 3, n)
    images = 0.5 + 0.015 * patterns[labels] + 0.12 * rng.standard_normal((n, 4, 4, 3))
    return (np.clip(np.round(images * 255), 0, 255).astype(np.uint8),
            labels.astype(np.int32))


@pytest.fixture(scope='module')
def trained_linear():
    model = build_model('linear', num_classes=3)
    images, labels = _noisy_linear_data(384, seed=0)
    params = init_variables(model, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))['params']
    x = (images / 255.0 - np.float32(MEAN)) / np.float32(STD)
    tx = optax.adam(0.05)

    @jax.jit
    def train(params):
        def loss(p):
            logits = model.apply({'params': p}, x)[0]
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

        def body(carry, _):
            p, opt = carry
            updates, opt = tx.update(jax.grad(loss)(p), opt)
            return (optax.apply_updates(p, updates), opt), None

        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=600)
        return p

    batches = [{'image': images[i:i + 128], 'label': labels[i:i + 128]}
               for i in range(0, 384, 128)]
    return model, params, jax.device_get(train(params)), batches


def test_trained_model_sits_at_the_minimum(trained_linear):
    model, initial, trained, batches = trained_linear
    loss_fn = ls.make_dataset_loss_fn(model, {}, batches, MEAN, STD)
    result = ls.landscape(loss_fns={'trained': loss_fn, 'copy': loss_fn, 'initial': loss_fn},
                          params={'trained': trained, 'copy': trained, 'initial': initial},
                          key=jax.random.key(3), steps=11, span=0.5, chunk=32)
    alphas, grids = result['alphas'], result['grids']
    assert alphas[5] == 0 and alphas[0] == -0.5 and result['betas'].shape == (11,)
    grid = grids['trained']
    assert grid.shape == (11, 11)
    center = float(jax.jit(loss_fn)(trained))
    assert grid[5, 5] == pytest.approx(center, abs=1e-6)
    assert grids['initial'][5, 5] == pytest.approx(float(jax.jit(loss_fn)(initial)), abs=1e-6)
    # Convex loss, converged model: the center is the grid minimum and the
    # loss rises on every ring away from it.
    assert grid.min() >= center - 1e-5
    assert np.unravel_index(np.argmin(grid), grid.shape) == (5, 5)
    i, j = np.indices(grid.shape)
    ring = np.maximum(np.abs(i - 5), np.abs(j - 5))  # Chebyshev distance from the center
    ring_min = [grid[ring == r].min() for r in range(6)]
    assert np.all(np.diff(ring_min) > 0), ring_min
    # Same parameters, same directions: identical grids.
    np.testing.assert_array_equal(grids['copy'], grid)
    with pytest.raises(ValueError, match='same'):
        ls.landscape(loss_fns={'a': loss_fn}, params={'b': trained}, key=jax.random.key(0))


def test_plots_are_png(trained_linear):
    grid = np.add.outer(np.linspace(-1, 1, 9) ** 2, np.linspace(-1, 1, 7) ** 2) + 0.5
    alphas, betas = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)
    broken = grid.copy()
    broken[0, 0] = np.nan
    broken[-1, -1] = np.inf
    pngs = [ls.contour_png(alphas, betas, grid, 'contour'),
            ls.contour_png(alphas, betas, broken, 'with nan', vmax=1.5),
            ls.heatmap_png(alphas, betas, broken, 'heat'),
            ls.surface_png(alphas, betas, broken, 'surface'),
            ls.compare_png(alphas, betas, {'baseline': grid, 'refined': 0.5 * grid},
                           'baseline vs refined')]
    for png in pngs:
        assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 1000


SHARDED_SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from camjax import parallel
from camjax.evaluation import landscape as ls
from camjax.models import build_model, init_variables

assert jax.device_count() == 4
model = build_model('resnet8', num_classes=5, width=4)
variables = init_variables(model, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
params, stats = variables['params'], variables['batch_stats']
rng = np.random.default_rng(0)
mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
batches = [{'image': rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
            'label': rng.integers(0, 5, 8).astype(np.int32), 'mask': mask} for _ in range(2)]
d = (ls.random_direction(params, jax.random.key(1)), ls.random_direction(params, jax.random.key(2)))
coeffs = np.linspace(-0.5, 0.5, 3)

def grid(devices):
    mesh = parallel.make_mesh(devices)
    loss_fn = ls.make_dataset_loss_fn(model, stats, batches, (0.5,) * 3, (0.25,) * 3, mesh=mesh)
    image = loss_fn.args[1]['image']
    assert len(image.sharding.device_set) == len(devices), image.sharding
    p, dd = jax.device_put((params, d), parallel.replicated(mesh))
    # Each device runs its shard of the batch; none gathers it (see _dataset_loss).
    if len(devices) > 1:
        hlo = ls._loss_grid.lower(loss_fn, p, dd, jnp.asarray(coeffs, jnp.float32),
                                  jnp.asarray(coeffs, jnp.float32), chunk=4).compile().as_text()
        assert 'all-gather' not in hlo
    return np.asarray(ls.loss_grid(loss_fn=loss_fn, params=p, directions=dd, alphas=coeffs,
                                   betas=coeffs, chunk=4))

one, four = grid(jax.devices()[:1]), grid(jax.devices())
np.testing.assert_allclose(four, one, rtol=1e-5)
print('ok', float(np.abs(four - one).max()))
'''


def test_grid_runs_on_the_mesh():
    assert 'ok' in run_on_cpu_devices(SHARDED_SCRIPT)
