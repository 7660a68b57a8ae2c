"""The model state of a run: TrainState, building a model from a config,
initializing it, the forward pass, and starting from another run's weights.

Training, refinement, evaluation, analysis and landscapes all use these; none
of them owns them.
"""

from typing import Any

import flax
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from camjax.checkpoint import restore_model_variables, saved_variable_shapes
from camjax.errors import CamjaxError
from camjax.models import CLASSIFIER, build_model, run_init_once


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def model_kwargs(model_cfg) -> dict:
    return {k: v for k, v in model_cfg.items() if k != 'name'}


def model_from_config(config, *, num_classes: int):
    """The flax module `config.model` names, with `num_classes` outputs."""
    return build_model(config.model.name, num_classes=num_classes, **model_kwargs(config.model))


def _dummy_images(image_size: int):
    return jnp.zeros((1, image_size, image_size, 3), jnp.float32)


def init_state(model, init_opt_state, *, seed: int, image_size: int, mesh) -> TrainState:
    """Fresh state, replicated on the mesh. Identical on every process (same
    seed). `init_opt_state(params)` makes the optimizer state (e.g. `tx.init`)."""
    from camjax import parallel

    def fresh(rng, images):  # one program: a start-up of many small ones is slower
        variables = model.init(rng, images, train=False)
        params = variables['params']
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get('batch_stats', {}),
                          opt_state=init_opt_state(params))
    return run_init_once(fresh, jax.random.key(seed), _dummy_images(image_size),
                         out_shardings=parallel.replicated(mesh))


def variable_shapes(model, image_size: int) -> dict:
    """{'params' | 'batch_stats': {'a/b/kernel': shape}} of `model`, traced
    only (no compile, no arrays): cheap enough for up-front checks."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), _dummy_images(image_size),
                                               train=False))
    return {name: {k: tuple(v.shape) for k, v in
                   flax.traverse_util.flatten_dict(shapes.get(name, {}), sep='/').items()}
            for name in ('params', 'batch_stats')}


def matching_plan(ours: dict, theirs: dict, path: str, *, new_classifier_ok: bool) -> set[str]:
    """Check that a checkpoint's variable shapes `theirs` fit the model's
    `ours` (both as from `variable_shapes`); return the keys ('params/...')
    to keep freshly initialized. Raises CamjaxError naming the first
    mismatching path and both shapes.

    With `new_classifier_ok` (fine-tuning), a CAM classifier whose class count
    differs (e.g. ImageNet -> CUB) is kept fresh; a refine or eval passes
    False, since it must use the very same model."""
    keep_fresh = set()
    for name in ('params', 'batch_stats'):
        mine, saved = ours[name], theirs.get(name, {})
        classifier = {k for k in mine if k.startswith(CLASSIFIER + '/')}
        if new_classifier_ok and any(k in saved and saved[k] != mine[k] for k in classifier):
            keep_fresh |= {f'{name}/{k}' for k in classifier}
        extra = sorted(set(saved) - set(mine))
        if extra:
            raise CamjaxError(f'checkpoint {path} has {name}/{extra[0]}, which the configured '
                              'model lacks (architecture mismatch)')
        for key, shape in sorted(mine.items()):
            if f'{name}/{key}' in keep_fresh:
                continue
            if key not in saved:
                raise CamjaxError(f'checkpoint {path} has no {name}/{key} (architecture '
                                  'mismatch)')
            if saved[key] != shape:
                head = (' (the classifier head: the checkpoint was trained for '
                        f'{saved[key][-1]} classes, this dataset has {shape[-1]})'
                        if key.startswith(CLASSIFIER + '/') else '')
                raise CamjaxError(f'checkpoint {path}: {name}/{key} has shape {saved[key]}, '
                                  f'the model needs {shape}{head}')
    return keep_fresh


def check_pretrained(model, image_size: int, path: str, step: int | None, *,
                     new_classifier_ok: bool) -> None:
    """Up-front form of `load_pretrained`: the same checks on shapes alone,
    restoring nothing, so a bad `init_from` fails before anything is written."""
    matching_plan(variable_shapes(model, image_size), saved_variable_shapes(path, step), path,
                  new_classifier_ok=new_classifier_ok)


def load_pretrained(state: TrainState, path: str, step: int | None, *,
                    new_classifier_ok: bool = True) -> TrainState:
    """Start from the model variables (params, BatchNorm statistics) of
    another camjax run, checked by `matching_plan`. Optimizer state starts
    fresh."""
    restored = restore_model_variables(path, step)
    flat = {name: flax.traverse_util.flatten_dict(getattr(state, name), sep='/')
            for name in ('params', 'batch_stats')}
    theirs = {name: flax.traverse_util.flatten_dict(restored[name], sep='/')
              for name in ('params', 'batch_stats')}
    keep_fresh = matching_plan(
        {n: {k: tuple(v.shape) for k, v in flat[n].items()} for n in flat},
        {n: {k: tuple(v.shape) for k, v in theirs[n].items()} for n in theirs}, path,
        new_classifier_ok=new_classifier_ok)
    replaced = {}
    for name, ours in flat.items():
        merged = {key: value if f'{name}/{key}' in keep_fresh else
                  jax.device_put(np.asarray(theirs[name][key], value.dtype), value.sharding)
                  for key, value in ours.items()}
        replaced[name] = flax.traverse_util.unflatten_dict(merged, sep='/')
    return state.replace(**replaced)


def forward(model, params, batch_stats, images, *, train: bool):
    """(logits, features, batch_stats): updated BatchNorm statistics when
    `train`, else the given ones."""
    variables = {'params': params, 'batch_stats': batch_stats}
    if train:
        (logits, features), updates = model.apply(variables, images, train=True,
                                                  mutable=['batch_stats'])
        return logits, features, updates.get('batch_stats', {})
    logits, features = model.apply(variables, images, train=False)
    return logits, features, batch_stats
