"""All Orbax use in camjax.

A run's workdir holds two CheckpointManagers with separate items
(params, batch_stats, opt_state, step, meta = loop state, data = iterator state):
  checkpoints/  the last `keep` saves; a rerun of the same command resumes here
  best/         the single best save by the validation metric
`restore_model_variables` reads only params and batch_stats from either, so a
refine run can start from any camjax checkpoint with a fresh optimizer.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from camjax import paths
from camjax.errors import CamjaxError

TREE_ITEMS = ('params', 'batch_stats', 'opt_state')
JSON_ITEMS = ('step', 'meta', 'data', 'imported')  # imported: save_model_variables
LATEST_DIR, BEST_DIR, DAMAGED_DIR = 'checkpoints', 'best', 'damaged'


def _manager(directory, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        paths.resolve(directory),
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
        self._workdir = paths.resolve(workdir)
        self._latest = _manager(self._workdir / LATEST_DIR, keep)
        self._best = _manager(self._workdir / BEST_DIR, 1)

    def save(self, step: int, state, *, meta: dict, data_state: dict) -> None:
        # `meta` may name a best step whose save is still in flight: finish it
        # first, so a completed save never refers to a best save a kill lost.
        self._best.wait_until_finished()
        self._latest.save(step, args=_save_args(state, meta, data_state), force=True)

    def latest_step(self) -> int | None:
        """The newest save's step (None before the first)."""
        return self._latest.latest_step()

    def save_best(self, step: int, state, *, meta: dict) -> None:
        if step in self._best.all_steps():
            return  # a resumed run replaying this step: the saved state is the same
        self._best.save(step, args=_save_args(state, meta, None), force=True)

    def restore_latest(self, abstract_state):
        """(state, meta, data_state) of the newest complete save, or None if
        the run never saved. See `_restore_newest_complete` for damaged saves."""
        check_not_imported(self._workdir)
        return self._restore_newest_complete(self._latest, abstract_state, with_data=True)

    def restore_best(self, abstract_state):
        restored = self._restore_newest_complete(self._best, abstract_state, with_data=False)
        return None if restored is None else restored[0]

    def _restore_newest_complete(self, manager, abstract_state, *, with_data: bool):
        """A save is complete only when every item this run saves is present
        and restores; a missing params or opt_state is damage, never "start
        that item fresh". A damaged save is moved aside to <workdir>/damaged/
        (never deleted) with a one-line warning, and the previous one is
        tried. If saves existed and none is usable, that is a CamjaxError:
        the run never silently starts from scratch."""
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            return None
        required = _required_items(abstract_state, with_data=with_data)
        moved = []
        for step in steps:
            missing = sorted(required - _saved_items(manager, step))
            problem = f'missing {", ".join(missing)}' if missing else None
            if problem is None:
                try:
                    return _restore_full(manager, step, abstract_state)
                except Exception as e:  # noqa: BLE001 -- any failure to read is damage
                    problem = f'unreadable: {type(e).__name__}: {" ".join(str(e).split())[:200]}'
            moved.append(self._move_aside(manager, step, problem))
        raise CamjaxError(f'no usable checkpoint in {manager.directory}: every save was '
                          f'damaged and moved aside ({", ".join(moved)}); remove the workdir '
                          'to start over')

    def _move_aside(self, manager, step: int, problem: str) -> str:
        source = epath.Path(manager.directory) / str(step)
        name = f'{epath.Path(manager.directory).name}-{step}'
        target = self._workdir / DAMAGED_DIR / name
        if jax.process_index() == 0:
            n = 1
            while target.exists():
                n += 1
                target = self._workdir / DAMAGED_DIR / f'{name}.{n}'
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
            print(f'camjax: warning: checkpoint {source} is damaged ({problem}); moved it to '
                  f'{target} and trying the previous one', file=sys.stderr, flush=True)
        manager.reload()
        return str(target)

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def _saved_items(manager, step) -> set[str]:
    return {p.name for p in (epath.Path(manager.directory) / str(step)).iterdir()}


def _required_items(abstract_state, *, with_data: bool) -> set[str]:
    """The items every save of this state has (empty trees are not saved)."""
    trees = {n for n in TREE_ITEMS if jax.tree.leaves(getattr(abstract_state, n))}
    return {'step', 'meta', *trees, *(['data'] if with_data else [])}


def _restore_full(manager, step, abstract_state):
    saved = _saved_items(manager, step)
    items = {n: ocp.args.StandardRestore(getattr(abstract_state, n))
             for n in TREE_ITEMS if n in saved}
    items.update({n: ocp.args.JsonRestore() for n in JSON_ITEMS if n in saved})
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    if restored['step'] != step or not isinstance(restored['meta'], dict):
        raise ValueError(f'step item {restored["step"]!r} or meta item does not match save {step}')
    state = abstract_state.replace(
        step=jax.device_put(np.int32(restored['step']), abstract_state.step.sharding),
        **{n: restored[n] for n in TREE_ITEMS if n in saved})
    return state, restored['meta'], restored.get('data')


def _checkpoint_directory(path: str) -> str:
    """A run's workdir means its checkpoints/ directory."""
    if (epath.Path(path) / LATEST_DIR).is_dir():
        return str(epath.Path(path) / LATEST_DIR)
    if not epath.Path(path).is_dir():
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
    caller can compare shapes against its own model; they are replicated over
    this process's devices, whatever the devices of the run that saved them (a
    pod's checkpoint restores on a laptop). Raises CamjaxError when nothing
    restorable is found.
    """
    from camjax import parallel
    manager, directory, step = _resolve_step(path, step)
    names = [n for n in ('params', 'batch_stats') if n in _saved_items(manager, step)]
    sharding = parallel.replicated(parallel.make_mesh())
    targets = {n: jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                 sharding=sharding),
                               _item_metadata(directory, step, n)) for n in names}
    restored = manager.restore(step, args=ocp.args.Composite(
        **{n: ocp.args.StandardRestore(targets[n]) for n in names}))
    return {'params': restored['params'], 'batch_stats': restored.get('batch_stats') or {}}


def _item_metadata(directory: str, step: int, name: str):
    """The saved tree of item `name` as Orbax metadata leaves (shape, dtype)."""
    try:
        return ocp.StandardCheckpointHandler().metadata(epath.Path(directory) / str(step) / name)
    except Exception as e:  # noqa: BLE001 -- any unreadable metadata is a damaged save
        raise CamjaxError(f'checkpoint {directory}/{step}/{name} is unreadable '
                          f'({type(e).__name__})') from None


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
        tree = _item_metadata(directory, step, name)
        shapes[name] = {'/'.join(str(getattr(k, 'key', k)) for k in key_path): tuple(leaf.shape)
                        for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    return shapes


IMPORTED_NOTE = 'model variables only, no optimizer or loop state'


def check_not_imported(workdir) -> None:
    """A CamjaxError if `workdir` holds imported weights (`save_model_variables`):
    training there would otherwise find a save without training state and
    take it for a damaged one."""
    directory = epath.Path(workdir) / LATEST_DIR
    if directory.is_dir() and any((d / 'imported').exists() for d in directory.iterdir()):
        raise CamjaxError(f'{workdir} holds imported weights ({IMPORTED_NOTE}), not a '
                          'training run to resume; start from them with '
                          f'--config.train.init_from={workdir} and another --workdir')


def save_model_variables(workdir: str, step: int, variables: dict, *, source: str) -> None:
    """Save `variables` ({'params', 'batch_stats'}) alone as
    `<workdir>/checkpoints/<step>/`, where `restore_model_variables` (and so
    train.init_from, refine and eval) reads them: imported weights
    (camjax.convert, `source` the file they came from). Its 'imported' item
    marks it, so that training in that workdir is refused in one line
    rather than resume from it or take it for a damaged save."""
    manager = _manager(epath.Path(workdir) / LATEST_DIR, keep=1)
    items = {n: ocp.args.StandardSave(variables[n]) for n in ('params', 'batch_stats')
             if jax.tree.leaves(variables.get(n, {}))}  # Orbax refuses empty trees
    items['imported'] = ocp.args.JsonSave({'source': source, 'contents': IMPORTED_NOTE})
    try:
        manager.save(step, args=ocp.args.Composite(**items), force=True)
        manager.wait_until_finished()
    finally:
        manager.close()
