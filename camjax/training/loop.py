"""What the training and refinement loops share: the step plan, the loop
state saved with every checkpoint, the log window, and `RunParts`, the pieces
every loop builds from its config (mesh, model, objective, data, evaluation,
checkpoints, run directory) with the small operations on them: evaluate,
select the best checkpoint, log a window, resume, save.

`camjax.training.train.train_and_evaluate` and `camjax.training.refine.refine` are flat loops
over these; neither inherits from the other.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from camjax import lock, objectives, parallel
from camjax.checkpoint import Checkpointer
from camjax.config.schema import resolve_device_sizes, selection_direction
from camjax.data import Splits, TrainBatches, eval_batches
from camjax.evaluation.classification import evaluate, make_eval_step
from camjax.rundir import LABEL_NOISE, RunDir
from camjax.training import collapse, nonfinite
from camjax.training.interrupt import Stopped
from camjax.training.runlog import RunLog, Throughput, format_duration
from camjax.training.state import load_pretrained, model_from_config


def due(step: int, every: int) -> bool:
    """Is it time, at `step`, for something done every `every` steps (0: never)?"""
    return every > 0 and step % every == 0


@dataclasses.dataclass
class Plan:
    """Step counts derived from the config and the dataset size."""
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, train_cfg, num_train: int) -> 'Plan':
        steps_per_epoch = max(num_train // train_cfg.batch_size, 1)
        total = train_cfg.num_steps or math.ceil(train_cfg.num_epochs * steps_per_epoch)
        return cls(steps_per_epoch, total, train_cfg.eval_every or steps_per_epoch,
                   train_cfg.checkpoint_every or steps_per_epoch)


@dataclasses.dataclass
class LoopState:
    """The loop's own state, saved as JSON with every checkpoint ('meta').

    `window` holds the summed step metrics since the last train record (host
    floats of the float32 device sums, so exact), `window_steps` their count
    and `window_bad_images` the replaced undecodable images its batches held
    (dataset.on_bad_image='skip'): a resumed run continues the very same
    window. The refine loop also uses `round`, `phase`, `phase_step`,
    `steps_run`, `baseline_done` and `collapse_streak` (the collapse guard's
    count of collapsed LinR steps in a row, `camjax.training.collapse`).
    `skipped_updates` counts the non-finite steps skipped so far
    (train.skip_nonfinite_updates).
    """
    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    window: dict = dataclasses.field(default_factory=dict)
    window_steps: int = 0
    window_bad_images: int = 0
    round: int = 0
    phase: str = ''
    phase_step: int = 0
    steps_run: dict = dataclasses.field(default_factory=dict)
    baseline_done: bool = False
    skipped_updates: int = 0
    collapse_streak: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, saved: dict) -> 'LoopState':
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})


class Window:
    """Step metrics summed on device (no host sync per step) until logged.
    `checked_steps` of its `steps` are known to be finite (`RunParts.check_finite`)."""

    def __init__(self, loop: LoopState):
        self.sums = ({k: jnp.asarray(v, jnp.float32) for k, v in loop.window.items()}
                     if loop.window else None)
        self.steps = loop.window_steps
        self.bad_images = loop.window_bad_images
        self.checked_steps = 0

    def add(self, step_metrics: dict) -> None:
        self.sums = step_metrics if self.sums is None else jax.tree.map(jnp.add, self.sums,
                                                                        step_metrics)
        self.steps += 1

    def nonfinite_counts(self) -> dict:
        """The summed non-finite indicators (`camjax.training.nonfinite`); a host sync."""
        if self.sums is None:
            return {}
        return {k: float(v) for k, v in
                nonfinite.split_flags(jax.device_get(self.sums))[1].items()}

    def take_means(self) -> tuple[dict, int]:
        """(mean of each metric over the window's good steps, number of bad
        (skipped) steps); resets the window."""
        sums, flags = nonfinite.split_flags(jax.device_get(self.sums))
        bad = int(flags.get(nonfinite.FLAG, 0))
        good = self.steps - bad
        means = {k: float(v) / good if good else math.nan for k, v in sums.items()}
        self.sums, self.steps, self.checked_steps = None, 0, 0
        return means, bad

    def take_bad_images(self) -> int:
        count, self.bad_images = self.bad_images, 0
        return count

    def store(self, loop: LoopState) -> None:
        """Put the open window into `loop`, to be saved with a checkpoint."""
        loop.window = ({} if self.sums is None else
                       {k: float(np.float32(v)) for k, v in jax.device_get(self.sums).items()})
        loop.window_steps = self.steps
        loop.window_bad_images = self.bad_images


def _format_terms(values: dict) -> str:
    return ' '.join(f'{k.removeprefix("loss/")} {v:.4f}' for k, v in values.items()
                    if k.startswith('loss/'))


def better(score: float, best: float | None, direction: str) -> bool:
    """Strictly better: ties keep the earlier checkpoint. A NaN score is never
    better, and anything else beats no best or a NaN best."""
    if best is None:
        return True
    if math.isnan(score):
        return False
    if math.isnan(best):
        return True
    return score > best if direction == 'higher' else score < best


class RunParts:
    """What one training or refine loop builds from its config."""

    def __init__(self, config, workdir: str, splits: Splits, *, total_steps=None):
        self.config, self.cfg_t, self.cfg_d, self.splits = (config, config.train,
                                                            config.dataset, splits)
        self.rundir = RunDir(workdir)
        self._writer = jax.process_index() == 0
        if self._writer:
            lock.acquire(workdir)  # released by close()
        try:
            self._build(config, workdir, splits, total_steps)
        except BaseException:
            self._release()
            raise

    def _build(self, config, workdir, splits, total_steps):
        resolve_device_sizes(config, num_devices=jax.device_count())  # as the CLI does
        self.rundir.create(config)  # the library API writes the same run directory as the CLI
        self.log = RunLog(self.rundir)
        self.mesh = parallel.make_mesh()
        self.model = model_from_config(config, num_classes=splits.num_classes)
        self.objective = objectives.build_objective(config.loss)
        if splits.train_label_noise is not None:  # which training labels were flipped
            self.rundir.write_arrays(LABEL_NOISE, overwrite=False, **splits.train_label_noise)
        self.step_kwargs = {'mean': tuple(self.cfg_d.mean), 'std': tuple(self.cfg_d.std),
                            'mesh': self.mesh}
        rate = self.rundir.positive_rate(splits)
        self.pos_rate = None if rate is None else jnp.asarray(rate)
        self.eval_step = make_eval_step(self.model, self.objective,
                                        num_classes=splits.num_classes,
                                        negative_cam_k=self.cfg_t.eval_negative_cam_k,
                                        pos_rate=self.pos_rate, **self.step_kwargs)
        self.plan = Plan.from_config(self.cfg_t, splits.sizes['train'])
        if total_steps is not None:
            self.plan.total_steps = total_steps
        self.batches = TrainBatches(splits.train, cfg=self.cfg_d,
                                    global_batch=self.cfg_t.batch_size, seed=config.seed,
                                    sharding=parallel.batch_sharded(self.mesh))
        self.ckpt = Checkpointer(workdir, keep=self.cfg_t.keep_checkpoints)

    # -- evaluation and selection ---------------------------------------------
    def next_batch(self, window: Window) -> dict:
        """The next training batch; its replaced images count in `window`."""
        before = self.batches.bad_images
        batch = next(self.batches)
        window.bad_images += self.batches.bad_images - before
        return batch

    def evaluate_split(self, state, split: str) -> dict:
        batches = eval_batches(
            getattr(self.splits, split), cfg=self.cfg_d, global_batch=self.cfg_t.eval_batch_size,
            global_size=self.splits.sizes[split], sharding=parallel.batch_sharded(self.mesh))
        result = evaluate(self.eval_step, state, batches)
        if self.cfg_d.on_bad_image == 'skip':  # left out of every metric (mask 0)
            result['bad_images'] = batches.bad_images
        return result

    def eval_record(self, state, step: int, *, splits=('val', 'test'), **extra) -> dict:
        record = {'kind': 'eval', 'step': step, 'epoch': step / self.plan.steps_per_epoch,
                  **extra}
        for split in splits:
            if getattr(self.splits, split) is not None:
                record[split] = self.evaluate_split(state, split)
        self.log.write(record)
        where = ''.join(f' {k} {v}' for k, v in extra.items())
        self.log.print(f'eval step {step}{where}: ' + ' | '.join(
            f'{s} acc {record[s]["accuracy"]:.4f} loss {record[s]["loss"]:.4f}'
            for s in splits if s in record))
        return record

    def select(self, loop: LoopState, record: dict, state) -> None:
        """Keep the best checkpoint by validation (never test); early-stop on patience."""
        if 'val' not in record:
            return
        metric = self.cfg_t.selection_metric
        score = record['val'][metric]
        if better(score, loop.best_score, selection_direction(metric)):
            loop.best_score, loop.best_step, loop.evals_since_best = score, loop.step, 0
            self.ckpt.save_best(loop.step, state, meta=loop.to_json())
            return
        loop.evals_since_best += 1
        patience = self.cfg_t.early_stopping_patience
        if patience and loop.evals_since_best >= patience:
            loop.stopped_early = True

    def evaluate_and_select(self, loop: LoopState, state, **record_kwargs) -> dict:
        record = self.eval_record(state, loop.step, **record_kwargs)
        self.select(loop, record, state)
        return record

    def report_best(self, state, loop: LoopState) -> dict | None:
        """Evaluate the best-by-validation checkpoint on test, once, at the
        end (again if a kill came before its record was written, or if the
        run was extended by a config change after it)."""
        kinds = [r['kind'] for r in self.rundir.records()]
        reported = 'best' in kinds and (
            'config_change' not in kinds
            or kinds[::-1].index('best') < kinds[::-1].index('config_change'))
        if loop.best_step is None or reported:
            return None
        self.ckpt.wait()
        test = self.evaluate_split(self.ckpt.restore_best(state), 'test')
        record = {'kind': 'best', 'step': loop.best_step, 'val_score': loop.best_score,
                  'stopped_early': loop.stopped_early, 'test': test}
        self.log.write(record)
        self.log.print(f'best checkpoint: step {loop.best_step} (val '
                       f'{self.cfg_t.selection_metric} {loop.best_score:.4f}) -> test '
                       f'accuracy {test["accuracy"]:.4f}'
                       + (' [early stopped]' if loop.stopped_early else ''))
        return record

    # -- logging, resuming, saving -------------------------------------------
    def log_window(self, window: Window, loop: LoopState, speed: Throughput, *,
                   tag: str = '', **fields) -> None:
        """Log the mean of the window's step metrics plus `fields`."""
        means, skipped = window.take_means()
        step, total = loop.step, self.plan.total_steps
        images_per_s, eta = speed.tick(step, batch_size=self.cfg_t.batch_size,
                                       total_steps=total)
        if self.cfg_t.skip_nonfinite_updates:
            loop.skipped_updates += skipped
            fields.update(skipped_updates=skipped, skipped_updates_total=loop.skipped_updates)
        bad_images = window.take_bad_images()
        if self.cfg_d.on_bad_image == 'skip':
            fields['bad_images'] = bad_images
        self.log.write({'kind': 'train', 'step': step, **fields, 'images_per_s': images_per_s,
                        **means})
        accuracy = f' | acc {means["accuracy"]:.3f}' if 'accuracy' in means else ''
        skips = collapse.format_means(means) + (
            f' | skipped {skipped} non-finite' if skipped else '') + (
            f' | {bad_images} bad images replaced' if bad_images else '')
        self.log.print(f'step {step}/{total}{tag} | loss {means["loss"]:.4f} '
                       f'({_format_terms(means)}){accuracy}{skips} | '
                       f'{images_per_s:.0f} img/s | ETA {format_duration(eta)}')

    def check_finite(self, window: Window, loop: LoopState) -> None:
        """At a log, eval or checkpoint boundary: stop (NonFiniteError) if a
        step since the last check was non-finite, unless such steps are skipped."""
        flags = window.nonfinite_counts()
        if flags.get(nonfinite.FLAG) and not self.cfg_t.skip_nonfinite_updates:
            first = loop.step - window.steps + window.checked_steps + 1
            raise nonfinite.NonFiniteError(nonfinite.failure_message(
                flags, first_step=first, last_step=loop.step,
                last_checkpoint=self.ckpt.latest_step()))
        window.checked_steps = window.steps

    def resume(self, initial_state, fresh: LoopState, *, new_classifier_ok: bool):
        """(state, loop state) from the newest checkpoint; else the initial
        state (from train.init_from's weights, if set) and `fresh`."""
        restored = self.ckpt.restore_latest(initial_state)
        if restored is None:
            state = initial_state
            if self.cfg_t.init_from:  # only a fresh run starts from another run's weights
                step = None if self.cfg_t.init_from_step < 0 else self.cfg_t.init_from_step
                state = load_pretrained(state, self.cfg_t.init_from, step,
                                        new_classifier_ok=new_classifier_ok)
                self.log.print(f'initialized from {self.cfg_t.init_from}')
            self.rundir.rewind(-1)  # a fresh start replays everything
            return state, fresh
        state, meta, data_state = restored
        loop = LoopState.from_json(meta)
        self.batches.set_state(data_state)
        self.rundir.rewind(loop.step)  # what ran after this checkpoint runs again
        self.log.write({'kind': 'resume', 'step': loop.step})
        self.log.print(f'resumed from step {loop.step}')
        return state, loop

    def save(self, state, loop: LoopState, window: Window) -> None:
        window.store(loop)
        self.ckpt.save(loop.step, state, meta=loop.to_json(),
                       data_state=self.batches.get_state())

    def end_step(self, state, loop: LoopState, window: Window, *, stop: str | None,
                 save: bool) -> None:
        """Save if due or if a stop was requested; after a requested stop's
        save, raise Stopped. (Call `check_finite` before anything is saved.)"""
        if save or stop:
            self.save(state, loop, window)
        if stop:
            self.ckpt.wait()
            raise Stopped(stop, loop.step)

    def close(self) -> None:
        """Finish and close the checkpoint saves, even after an error; stop
        the data workers; let go of the workdir's lock."""
        try:
            self.batches.close()
            self.ckpt.wait()
            self.ckpt.close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._writer:
            lock.release(self.rundir.path)
