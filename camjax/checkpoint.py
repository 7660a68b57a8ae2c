"""All Orbax use in camjax.

A run's workdir holds two CheckpointManagers with separate items
(params, batch_stats, opt_state, step, meta = loop state, data = iterator state):
  checkpoints/  the last `keep` saves; a rerun of the same command resumes here
  best/         the single best save by the validation metric
`restore_model_variables` reads only params and batch_stats from either, so a
refine run can start from any camjax checkpoint with a fresh optimizer.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from camjax.errors import CamjaxError

TREE_ITEMS = ('params', 'batch_stats', 'opt_state')
JSON_ITEMS = ('step', 'meta', 'data')
LATEST_DIR, BEST_DIR = 'checkpoints', 'best'


def _manager(directory: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                             read_only=read_only),
        item_names=TREE_ITEMS + JSON_ITEMS)


def _save_args(state, meta: dict, data_state: dict | None):
    # Async saves read the arrays after save() returns, and on CPU through a
    # zero-copy host view, while the next train step donates (reuses) the
    # state's buffers. Saving a private copy keeps each checkpoint exact.
    state = jax.tree.map(jnp.copy, state)
    items = {'step': ocp.args.JsonSave(int(state.step)), 'meta': ocp.args.JsonSave(meta)}
    if data_state is not None:
        items['data'] = ocp.args.JsonSave(data_state)
    for name in TREE_ITEMS:
        tree = getattr(state, name)
        if jax.tree.leaves(tree):  # Orbax refuses empty trees (e.g. no BatchNorm)
            items[name] = ocp.args.StandardSave(tree)
    return ocp.args.Composite(**items)


class Checkpointer:
    """Saves and restores a TrainState (a pytree with fields params,
    batch_stats, opt_state and step) plus JSON loop and data-iterator state."""

    def __init__(self, workdir: str, *, keep: int):
        self._latest = _manager(os.path.join(workdir, LATEST_DIR), keep)
        self._best = _manager(os.path.join(workdir, BEST_DIR), 1)

    def save(self, step: int, state, *, meta: dict, data_state: dict) -> None:
        self._latest.save(step, args=_save_args(state, meta, data_state), force=True)

    def save_best(self, step: int, state, *, meta: dict) -> None:
        if step in self._best.all_steps():
            return  # a resumed run replaying this step: the saved state is the same
        self._best.save(step, args=_save_args(state, meta, None), force=True)

    def restore_latest(self, abstract_state):
        """Returns (state, meta, data_state) of the newest save, or None."""
        step = self._latest.latest_step()
        if step is None:
            return None
        return _restore_full(self._latest, step, abstract_state)

    def restore_best(self, abstract_state):
        step = self._best.latest_step()
        return None if step is None else _restore_full(self._best, step, abstract_state)[0]

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def _saved_items(manager, step) -> set[str]:
    return set(os.listdir(os.path.join(manager.directory, str(step))))


def _restore_full(manager, step, abstract_state):
    saved = _saved_items(manager, step)
    items = {n: ocp.args.StandardRestore(getattr(abstract_state, n))
             for n in TREE_ITEMS if n in saved}
    items.update({n: ocp.args.JsonRestore() for n in JSON_ITEMS if n in saved})
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    state = abstract_state.replace(
        step=jax.device_put(np.int32(restored['step']), abstract_state.step.sharding),
        **{n: restored[n] for n in TREE_ITEMS if n in saved})
    return state, restored['meta'], restored.get('data')


def _checkpoint_directory(path: str) -> str:
    """A run's workdir means its checkpoints/ directory."""
    if os.path.isdir(os.path.join(path, LATEST_DIR)):
        return os.path.join(path, LATEST_DIR)
    if not os.path.isdir(path):
        raise CamjaxError(f'no checkpoint directory at {path!r}')
    return path


def saved_steps(path: str) -> list[int]:
    """Sorted steps saved under `path` (a workdir or a checkpoint directory)."""
    directory = _checkpoint_directory(path)
    return sorted(_manager(directory, keep=1, read_only=True).all_steps())


def _resolve_step(path: str, step: int | None):
    """(manager, directory, step) of `path`'s save at `step` (None: newest)."""
    directory = _checkpoint_directory(path)
    manager = _manager(directory, keep=1, read_only=True)
    steps = manager.all_steps()
    if not steps:
        raise CamjaxError(f'no checkpoints in {directory!r}')
    step = max(steps) if step is None else step
    if step not in steps:
        raise CamjaxError(f'no checkpoint for step {step} in {directory!r} (have {sorted(steps)})')
    return manager, directory, step


def restore_model_variables(path: str, step: int | None = None) -> dict:
    """Restore only {'params', 'batch_stats'} from a camjax checkpoint.

    `path` is a run's workdir (its newest save), or a `checkpoints/` or `best/`
    directory. Arrays come back as saved, with no target structure, so the
    caller can compare shapes against its own model. Raises CamjaxError when
    nothing restorable is found.
    """
    manager, _, step = _resolve_step(path, step)
    names = [n for n in ('params', 'batch_stats') if n in _saved_items(manager, step)]
    restored = manager.restore(step, args=ocp.args.Composite(
        **{n: ocp.args.StandardRestore() for n in names}))
    return {'params': restored['params'], 'batch_stats': restored.get('batch_stats') or {}}


def saved_variable_shapes(path: str, step: int | None = None) -> dict:
    """{'params' | 'batch_stats': {'a/b/kernel': shape}} of the save that
    `restore_model_variables(path, step)` would read, from Orbax's metadata
    alone (no array is read)."""
    manager, directory, step = _resolve_step(path, step)
    saved = _saved_items(manager, step)
    shapes = {}
    for name in ('params', 'batch_stats'):
        if name not in saved:
            shapes[name] = {}
            continue
        try:
            tree = ocp.StandardCheckpointHandler().metadata(
                epath.Path(directory) / str(step) / name)
        except Exception as e:  # noqa: BLE001 -- any unreadable metadata is a damaged save
            raise CamjaxError(f'checkpoint {directory}/{step}/{name} is unreadable '
                              f'({type(e).__name__})') from None
        shapes[name] = {'/'.join(str(getattr(k, 'key', k)) for k in key_path): tuple(leaf.shape)
                        for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    return shapes
