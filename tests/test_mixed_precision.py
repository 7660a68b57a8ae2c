"""model.dtype='bfloat16': convolutions compute in bf16, while params,
optimizer state and BatchNorm statistics stay float32, and the classifier,
softmax / log-softmax, KL and the HNC terms run in float32 (the CAM head
casts the features, `models.layers.cam_head`). So each loss in bf16 stays
within a stated tolerance of its float32 value on the same weights and
batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import small_config

from camjax import objectives
from camjax.data import normalize_images
from camjax.models import MODELS
from camjax.parallel import make_mesh
from camjax.training import refine, train
from camjax.training.state import forward, init_state

NORM = {'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25)}
# Relative tolerance of a bf16 loss against float32. bf16 keeps 8 bits of
# mantissa (a relative step of 2**-8 = 0.4% per rounding); measured on this
# model and batch: CE 0.014%, hnc_kd 0.004%, hnc_mse 0.041%, LinR 0.16%,
# LinRC 0.057%.
RTOL = 0.01
TERMS = {'cross_entropy': dict(name='cross_entropy'),
         'hnc_kd': dict(name='hnc_kd', k=3),
         'hnc_mse': dict(name='hnc_mse', k=3)}


@pytest.fixture(scope='module')
def setup():
    models = {dtype: MODELS['resnet8'](num_classes=6, width=8, dtype=dtype)
              for dtype in ('float32', 'bfloat16')}
    state = init_state(models['float32'], lambda p: {}, seed=0, image_size=32, mesh=make_mesh())
    rng = np.random.default_rng(0)
    batch = {'image': jnp.asarray(rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)),
             'label': jnp.asarray(rng.integers(0, 6, 32, dtype=np.int32))}
    return models, state, batch


def _outputs(model, state, batch):
    images = normalize_images(batch['image'], **NORM)
    return forward(model, state.params, state.batch_stats, images, train=True)


@pytest.mark.parametrize('name', sorted(TERMS))
def test_classification_and_hnc_losses_in_bf16_match_float32(name, setup):
    models, state, batch = setup
    objective = objectives.build_objective((TERMS[name],))
    values = {}
    for dtype, model in models.items():
        logits, features, _ = _outputs(model, state, batch)
        inputs = objectives.objective_inputs(logits, features, batch['label'], state.params,
                                             None)
        values[dtype] = float(objective(inputs, jnp.ones(32))[0])
    assert np.isfinite(values['float32']) and values['float32'] > 0
    assert values['bfloat16'] == pytest.approx(values['float32'], rel=RTOL)


@pytest.mark.parametrize('variant', ['linr', 'linrc'])
def test_linr_losses_in_bf16_match_float32(variant, setup):
    models, state, batch = setup
    cfg = small_config().refine
    cfg.variant = variant
    # KL(P1||P2) with P2 from running statistics: a loss well above 0 at this
    # untrained model, where a relative tolerance means something.
    cfg.direction, cfg.reduction, cfg.p2_batchnorm = 'p1_p2', 'sum', 'running'
    cfg.running_stats_from = 'mixed'
    images = normalize_images(batch['image'], **NORM)
    values = {dtype: float(refine.linr_loss(
        model, cfg, params=state.params, p2_params=state.params, batch_stats=state.batch_stats,
        images=images, key=jax.random.key(0), multilabel=False)[0])
        for dtype, model in models.items()}
    assert np.isfinite(values['float32']) and values['float32'] > 0
    assert values['bfloat16'] == pytest.approx(values['float32'], rel=RTOL)


def test_bf16_keeps_params_optimizer_state_and_statistics_in_float32(setup):
    models, _, batch = setup
    model = models['bfloat16']
    tx = optax.sgd(0.1, momentum=0.9)
    state = init_state(model, tx.init, seed=0, image_size=32, mesh=make_mesh())
    logits, features, _ = _outputs(model, state, batch)
    assert features.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    step = train.make_train_step(model, objectives.build_objective(tuple(TERMS.values())), tx,
                                 mesh=make_mesh(), **NORM)
    state, metrics = step(state, batch)
    for tree in (state.params, state.opt_state, state.batch_stats):
        dtypes = {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
        assert dtypes == {jnp.dtype('float32')}
    assert np.isfinite(float(metrics['loss']))
