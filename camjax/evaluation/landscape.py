"""Loss landscapes along two filter-normalized random directions.

Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets" (Sec. 4):
plot f(a, b) = L(theta + a d1 + b d2) for two random Gaussian directions
d1, d2 rescaled filter by filter to the norms of theta's filters, so that the
plot is comparable across networks whose weights differ in scale (a BatchNorm
or ReLU network is invariant to such rescaling). The LinR paper (Fig. 6)
compares a baseline and its LinR-refined model on the same directions.

Filter-wise choices (flax layouts):
- A "filter" is one output unit: the slice [..., j] of a conv kernel
  (kh, kw, in, out) or a dense kernel (in, out). Li et al. normalize per output
  channel of the PyTorch weight (out, in, ...); it is the same slice.
- Leaves with ndim <= 1 are biases and BatchNorm scales / offsets. With
  `ignore_bn_and_bias` (the default, Li et al.'s `ignore='biasbn'`) their
  direction entries are 0, so only the weights move; otherwise the direction
  equals the parameter itself, as in Li et al.'s released code.
- BatchNorm running statistics are not parameters: they stay fixed (eval mode),
  so every grid point is the network the checkpoint would deploy, moved.

The grid is one compiled call: `lax.map` over chunks of grid points, each
chunk `vmap`ped, so memory scales with the chunk, not with the grid.
"""

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding, PartitionSpec
from jax.tree_util import Partial

from camjax import losses, parallel
from camjax.analysis.figures import figure_png
from camjax.data import normalize_images
from camjax.training.state import forward


# =============================================================================
# Directions
# =============================================================================
def gaussian_direction(params, key):
    """A standard-normal pytree shaped like `params` (float32).

    One draw over the flattened tree (rather than one per leaf) compiles a
    single random program; the values depend only on `key` and the tree's
    structure and shapes, so two models of one architecture get the same draw.
    """
    flat, unravel = ravel_pytree(params)
    return unravel(jax.random.normal(key, flat.shape, jnp.float32))


def filter_normalize(direction, params, *, ignore_bn_and_bias: bool = True):
    """Li et al. 2018, Sec. 4: d_{i,j} <- d_{i,j} / ||d_{i,j}|| * ||theta_{i,j}||
    for every filter j of every layer i (see the module docstring for what a
    filter is and how 1-D leaves are treated). `direction` and `params` are
    pytrees of one structure; returns the normalized direction."""

    def one(d, p):
        if p.ndim <= 1:
            return jnp.zeros_like(d) if ignore_bn_and_bias else p.astype(d.dtype)
        axes = tuple(range(p.ndim - 1))
        d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
        p_norm = jnp.sqrt(jnp.sum(jnp.square(p.astype(d.dtype)), axis=axes, keepdims=True))
        # The 1e-10 of Li et al.'s code keeps an all-zero filter at zero.
        return d * (p_norm / (d_norm + 1e-10))

    return jax.tree.map(one, direction, params)


def random_direction(params, key, *, ignore_bn_and_bias: bool = True):
    """A filter-normalized Gaussian direction for `params`; call it with two
    keys for the two axes of a landscape."""
    return filter_normalize(gaussian_direction(params, key), params,
                            ignore_bn_and_bias=ignore_bn_and_bias)


# =============================================================================
# Grid
# =============================================================================
@functools.partial(jax.jit, static_argnames='chunk')
def _loss_grid(loss_fn, params, directions, alphas, betas, *, chunk: int):
    d1, d2 = directions
    a, b = jnp.meshgrid(alphas, betas, indexing='ij')
    coeffs = jnp.stack([a.ravel(), b.ravel()], axis=-1)               # (N, 2)
    n = coeffs.shape[0]
    chunk = min(chunk, n)
    # Padding points sit at the center: finite, cheap to check, and discarded.
    coeffs = jnp.concatenate([coeffs, jnp.zeros(((-n) % chunk, 2), coeffs.dtype)])

    def point(ab):
        moved = jax.tree.map(lambda p, u, v: p + (ab[0] * u + ab[1] * v).astype(p.dtype),
                             params, d1, d2)
        return loss_fn(moved)

    values = jax.lax.map(jax.vmap(point), coeffs.reshape(-1, chunk, 2))  # (N / chunk, chunk)
    return values.reshape(-1)[:n].reshape(alphas.shape[0], betas.shape[0])


def loss_grid(*, loss_fn: Callable, params, directions, alphas, betas, chunk: int = 16):
    """L(params + a d1 + b d2) on the grid alphas x betas.

    Args:
      loss_fn: params -> scalar loss, with its data already bound. A
        `jax.tree_util.Partial` (as `make_dataset_loss_fn` returns) passes its
        bound arrays as arguments of the compiled grid; a plain closure works
        too, but its arrays are baked in as constants.
      params: the center theta.
      directions: (d1, d2), pytrees shaped like params.
      alphas: (A,) coefficients of d1.
      betas: (Bt,) coefficients of d2.
      chunk: grid points evaluated at once by `vmap` (memory ~ chunk models).
    Returns:
      (A, Bt) float array; [i, j] is the loss at alphas[i], betas[j]. The
      result does not depend on `chunk` beyond float rounding.
    """
    alphas, betas = jnp.asarray(alphas, jnp.float32), jnp.asarray(betas, jnp.float32)
    if alphas.ndim != 1 or betas.ndim != 1:
        raise ValueError(f'alphas and betas must be 1-D, got {alphas.shape}, {betas.shape}')
    if chunk < 1:
        raise ValueError(f'chunk must be >= 1, got {chunk}')
    d1, d2 = directions
    if not isinstance(loss_fn, Partial):
        loss_fn = Partial(loss_fn)
    return _loss_grid(loss_fn, params, (d1, d2), alphas, betas, chunk=int(chunk))


def _dataset_loss(batch_stats, stacked, params, *, model, mean, std, mesh):
    """Masked mean CE over the stacked batches.

    An explicit `shard_map`: under plain jit, `vmap` over grid points turns
    every conv into a grouped conv (one group per point), and the SPMD
    partitioner all-gathers the batch before each of those, so every device
    would run the whole batch. Here each device runs its own shard of every
    batch (eval mode: no cross-example coupling) and one psum adds the sums.
    `lax.map` runs one batch at a time: activation memory is that of one
    local batch times the vmapped chunk.
    """

    def local(params, batch_stats, stacked):
        def one(batch):
            images = normalize_images(batch['image'], mean=mean, std=std)
            logits, _, _ = forward(model, params, batch_stats, images, train=False)
            ce = losses.softmax_cross_entropy(logits=logits, labels=batch['label'])
            return jnp.sum(ce * batch['mask']), jnp.sum(batch['mask'])

        total, count = jax.lax.map(one, stacked)
        return jax.lax.psum((jnp.sum(total), jnp.sum(count)), parallel.DATA_AXIS)

    data = PartitionSpec(None, parallel.DATA_AXIS)
    total, count = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(),
                                                             data),
                                 out_specs=PartitionSpec())(params, batch_stats, stacked)
    return total / count


def make_dataset_loss_fn(model, batch_stats, batches: Sequence[Mapping], mean, std, *,
                         mesh=None) -> Partial:
    """loss_fn(params) = mean softmax CE over fixed eval batches (examples with
    mask 0 excluded), the model in eval mode with running `batch_stats`.

    Args:
      batches: eval batches {'image' uint8 (B,H,W,3), 'label' (B,), optional
        'mask' (B,)}, all of one shape, e.g. from `camjax.data.eval_batches`.
        Single-label only.
      mesh: the ('data',) mesh; default `parallel.make_mesh()`. The batches are
        stacked to (num_batches, B, ...) and sharded on B, `batch_stats`
        replicated, so `loss_grid` runs data-parallel on the mesh.
    Returns:
      A `jax.tree_util.Partial`: its data are traced arguments, not constants.
    """
    if not batches:
        raise ValueError('make_dataset_loss_fn needs at least one batch')
    mesh = parallel.make_mesh() if mesh is None else mesh
    kept = []
    for batch in batches:
        if np.ndim(batch['label']) != 1:
            raise ValueError('the landscape loss is single-label: labels must be (B,), got '
                             f'shape {np.shape(batch["label"])}')
        mask = batch.get('mask')
        if mask is None:
            mask = np.ones(np.shape(batch['label']), np.float32)
        kept.append({'image': batch['image'], 'label': batch['label'], 'mask': mask})
    stack = jax.jit(lambda bs: jax.tree.map(lambda *x: jnp.stack(x), *bs),
                    out_shardings=NamedSharding(mesh, PartitionSpec(None, parallel.DATA_AXIS)))
    stacked = stack(kept)
    batch_stats = jax.device_put(batch_stats, parallel.replicated(mesh))
    return Partial(functools.partial(_dataset_loss, model=model, mean=tuple(mean),
                                     std=tuple(std), mesh=mesh), batch_stats, stacked)


def landscape(*, loss_fns: Mapping[str, Callable], params: Mapping, key, steps: int = 21,
              span: float = 1.0, chunk: int = 16, ignore_bn_and_bias: bool = True) -> dict:
    """Loss grids of several runs (e.g. baseline and LinR-refined) on shared
    directions.

    Two Gaussian directions are drawn once, shaped by the first run's params,
    and then filter-normalized to *each* run's own parameters. Li et al.
    normalize to the plotted model; drawing once keeps the random part common,
    so the runs are compared along the same directions while each grid's axis
    still means "a fraction of that model's filter norms". All runs must share
    one architecture.

    Returns:
      {'alphas': (steps,), 'betas': (steps,), 'grids': {name: (steps, steps)}}
      as numpy arrays, with alphas = betas = linspace(-span, span, steps).
    """
    names = list(params)
    if not names or set(loss_fns) != set(names):
        raise ValueError(f'loss_fns {sorted(loss_fns)} and params {sorted(params)} must name '
                         'the same, non-empty set of runs')
    first = params[names[0]]
    shapes = jax.tree.map(jnp.shape, first)
    for name in names[1:]:
        if jax.tree.map(jnp.shape, params[name]) != shapes:
            raise ValueError(f'run {name!r} differs from {names[0]!r} in parameter structure '
                             'or shapes; shared directions need one architecture')
    k1, k2 = jax.random.split(key)
    gaussians = (gaussian_direction(first, k1), gaussian_direction(first, k2))
    coefficients = np.linspace(-span, span, steps)
    grids = {}
    for name in names:
        directions = tuple(filter_normalize(g, params[name],
                                            ignore_bn_and_bias=ignore_bn_and_bias)
                           for g in gaussians)
        grids[name] = np.asarray(jax.device_get(loss_grid(
            loss_fn=loss_fns[name], params=params[name], directions=directions,
            alphas=coefficients, betas=coefficients, chunk=chunk)))
    return {'alphas': coefficients, 'betas': coefficients, 'grids': grids}


# =============================================================================
# Plots (PNG bytes; matplotlib.figure.Figure, never pyplot)
# =============================================================================
def _png(figure) -> bytes:
    return figure_png(figure, dpi=110, bbox_inches='tight')


def _levels(grids, levels: int, vmax: float | None) -> np.ndarray:
    """Shared contour levels from the finite values of all grids, optionally
    capped at vmax: far from the center the loss can explode and flatten every
    contour near the minimum (Li et al. cap their plots the same way)."""
    finite = np.concatenate([np.asarray(g, np.float64)[np.isfinite(g)].ravel() for g in grids])
    if finite.size == 0:
        raise ValueError('the loss grid has no finite values')
    lo, hi = finite.min(), finite.max()
    if vmax is not None:
        hi = min(hi, vmax)
    if not hi > lo:
        hi = lo + max(abs(lo), 1.0) * 1e-6
    return np.linspace(lo, hi, levels)


def _mesh(alphas, betas):
    return np.meshgrid(np.asarray(alphas), np.asarray(betas), indexing='ij')


def _contour(ax, alphas, betas, grid, levels):
    a, b = _mesh(alphas, betas)
    lines = ax.contour(a, b, np.ma.masked_invalid(grid), levels=levels, cmap='viridis',
                       linewidths=0.8)
    ax.clabel(lines, lines.levels[::max(len(lines.levels) // 6, 1)], fontsize=6, fmt='%.3g')
    ax.plot([0], [0], marker='*', color='tab:red', ms=8)
    ax.set(xlabel='alpha (direction 1)', ylabel='beta (direction 2)', aspect='equal')
    return lines


def contour_png(alphas, betas, grid, title: str = '', *, levels: int = 30,
                vmax: float | None = None) -> bytes:
    """Contour lines of grid (A, Bt) over alphas (A,) x betas (Bt,); the star
    is the trained model (a = b = 0)."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(5, 4.5))
    ax = figure.add_subplot()
    _contour(ax, alphas, betas, grid, _levels([grid], levels, vmax))
    ax.set_title(title)
    return _png(figure)


def heatmap_png(alphas, betas, grid, title: str = '', *, vmax: float | None = None) -> bytes:
    """Filled colour map of grid (A, Bt) with a colour bar."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(5.5, 4.5))
    ax = figure.add_subplot()
    a, b = _mesh(alphas, betas)
    levels = _levels([grid], 2, vmax)
    image = ax.pcolormesh(a, b, np.ma.masked_invalid(grid), shading='auto', cmap='viridis',
                          vmin=levels[0], vmax=levels[-1])
    figure.colorbar(image, ax=ax, label='loss')
    ax.plot([0], [0], marker='*', color='tab:red', ms=8)
    ax.set(xlabel='alpha (direction 1)', ylabel='beta (direction 2)', title=title)
    return _png(figure)


def surface_png(alphas, betas, grid, title: str = '', *, vmax: float | None = None) -> bytes:
    """3-D surface of grid (A, Bt) (Li et al., Fig. 1)."""
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers projection='3d')
    figure = Figure(figsize=(6, 5))
    ax = figure.add_subplot(projection='3d')
    a, b = _mesh(alphas, betas)
    levels = _levels([grid], 2, vmax)
    z = np.clip(np.nan_to_num(np.asarray(grid, np.float64), nan=levels[-1], posinf=levels[-1]),
                None, levels[-1])
    ax.plot_surface(a, b, z, cmap='viridis', vmin=levels[0], vmax=levels[-1], linewidth=0,
                    antialiased=True)
    ax.set(xlabel='alpha', ylabel='beta', zlabel='loss', title=title)
    return _png(figure)


def compare_png(alphas, betas, grids: Mapping[str, np.ndarray], title: str = '', *,
                levels: int = 30, vmax: float | None = None) -> bytes:
    """Side-by-side contours of several runs on one set of levels, so equal
    colours mean equal loss (LinR paper, Fig. 6: baseline vs refined)."""
    from matplotlib.figure import Figure
    if not grids:
        raise ValueError('compare_png needs at least one grid')
    shared = _levels(list(grids.values()), levels, vmax)
    figure = Figure(figsize=(4.5 * len(grids) + 1, 4.5))
    axes = figure.subplots(1, len(grids), squeeze=False)[0]
    for ax, (name, grid) in zip(axes, grids.items(), strict=True):
        lines = _contour(ax, alphas, betas, grid, shared)
        ax.set_title(name)
        if ax is not axes[0]:
            ax.set_ylabel('')  # one shared label; a second one overlaps the left panel
    figure.colorbar(lines, ax=list(axes), label='loss')
    if title:
        figure.suptitle(title)
    return _png(figure)
