"""The run directory: the one module that reads and writes a run's files.

  <workdir>/config.json        the run's whole config: the source of truth that
                               eval, analyze, refine and sweep rebuild it from
  <workdir>/metrics.jsonl      one JSON record per line: 'train' windows,
                               'eval's, 'resume' markers, the 'best' record
  <workdir>/label_noise.npz    which training labels were flipped (label noise)
  <workdir>/label_stats.json   a multi-label training split's positive rates
  <workdir>/eval/              mode=eval: eval.json, predictions.npz
  <workdir>/analysis.json, report.html, cache/   mode=analyze
  <workdir>/sweep.*, step_<S>/ mode=sweep
  <workdir>/checkpoints/, best/  Orbax saves (camjax.checkpoint)

Only process 0 writes. Files are written whole to a temporary name and
renamed, so a kill never leaves half a file. The workdir may be on an object
store (`gs://...`, camjax.paths): there a rename is a copy, and appending a
record rewrites metrics.jsonl, since object stores cannot append.
"""

import io
import json

import jax
import ml_collections
import numpy as np
from etils import epath

from camjax import paths
from camjax.errors import CamjaxError

CONFIG, METRICS = 'config.json', 'metrics.jsonl'
LABEL_NOISE, LABEL_STATS = 'label_noise.npz', 'label_stats.json'
EVAL_DIR = 'eval'


def config_to_dict(config) -> dict:
    """The config as config.json stores it (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict(), sort_keys=True, default=str))


def _tuples(value):
    """JSON lists back to the tuples the config had (hashable module fields)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _with_new_fields(saved: dict) -> dict:
    """A saved config with every field the schema gained after it was written
    set to its default. A new field's default is always the behaviour camjax
    had before the field existed, so a run from an older camjax still resumes,
    refines and evaluates as what it was. (Model fields are the model's own.)"""
    from camjax.config.schema import base_config  # schema -> errors only; no cycle
    return _fill(saved, _tuples(config_to_dict(base_config())))


def _fill(saved: dict, defaults: dict) -> dict:
    out = dict(saved)
    for key, default in defaults.items():
        if key not in out:
            out[key] = default
        elif isinstance(default, dict) and isinstance(out[key], dict) and key != 'model':
            out[key] = _fill(out[key], default)
    return out


# Fields an existing run accepts new values for (to train longer, log or save
# more often, read faster, get past a corrupt image that stopped it);
# evaluation.* only configures mode=eval / analyze.
SAFE_TO_CHANGE = ('train.num_steps', 'train.num_epochs', 'train.log_every',
                  'train.eval_every', 'train.checkpoint_every', 'train.keep_checkpoints',
                  'dataset.num_threads', 'dataset.prefetch', 'dataset.num_workers',
                  'dataset.on_bad_image',
                  'evaluation.')


def differences(old, new, prefix: str = '') -> dict:
    """Every differing leaf of two config dicts: {'a.b': (old, new)}."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                out.update(differences(old.get(key), new.get(key), f'{prefix}{key}.'))
        return out
    return {prefix.rstrip('.'): (old, new)}


def _safe_to_change(field: str) -> bool:
    return any(field == safe or (safe.endswith('.') and field.startswith(safe))
               for safe in SAFE_TO_CHANGE)


class RunDir:
    def __init__(self, path: str):
        self.path = str(path)

    @property
    def is_writer(self) -> bool:
        # Asked only when writing: reading a config must not start a JAX
        # backend before jax.distributed is initialized.
        return jax.process_index() == 0

    def file(self, *parts: str) -> str:
        return str(self._path(*parts))

    def _path(self, *parts: str) -> epath.Path:
        return epath.Path(self.path).joinpath(*parts)

    def exists(self, *parts: str) -> bool:
        return self._path(*parts).exists()

    # -- config.json ---------------------------------------------------------
    def saved_config(self) -> ml_collections.ConfigDict | None:
        if not self.exists(CONFIG):
            return None
        try:
            saved = _tuples(json.loads(self._path(CONFIG).read_text()))
        except (OSError, ValueError) as e:
            raise CamjaxError(f'{self.file(CONFIG)} is unreadable ({type(e).__name__}: '
                              f'{e})') from None
        return ml_collections.ConfigDict(_with_new_fields(saved))

    def trained_config(self) -> ml_collections.ConfigDict:
        """The config of the trained run here; CamjaxError if it is not one."""
        config = self.saved_config()
        if config is None:
            raise CamjaxError(f'{self.path!r} is not a camjax run (no {CONFIG})')
        return config

    def create(self, config) -> None:
        """Write config.json, or check that the run here has the same config.
        A different one is refused naming every differing field, so no
        earlier run's files are overwritten, unless every difference is in
        SAFE_TO_CHANGE: then config.json takes the new values and a
        'config_change' record in metrics.jsonl says which (it has no step,
        so it survives the rewind of a resume)."""
        saved = self.saved_config()
        new = config_to_dict(config)
        if saved is not None:
            diffs = differences(config_to_dict(saved), new)
            unsafe = [f'{k}: {old!r} -> {value!r}' for k, (old, value) in diffs.items()
                      if not _safe_to_change(k)]
            if unsafe:
                raise CamjaxError(f'{self.path} holds a run with a different config '
                                  f'({"; ".join(unsafe)}); rerun with the same config to '
                                  'resume, or pick another --workdir')
            if not diffs:
                return
            self.append({'kind': 'config_change',
                         'changes': {k: list(v) for k, v in diffs.items()}})
            if self.is_writer:
                    print(f'camjax: {self.path}: changing ' + ', '.join(
                    f'{k} {old!r} -> {value!r}' for k, (old, value) in diffs.items()),
                    flush=True)
        self.write_json(CONFIG, new, sort_keys=True)

    # -- metrics.jsonl -------------------------------------------------------
    def append(self, record: dict) -> None:
        if not self.is_writer:
            return
        line = json.dumps(record) + '\n'
        if paths.is_remote(self.path):
            old = self._path(METRICS).read_text() if self.exists(METRICS) else ''
            self._write_atomic(METRICS, old + line)
        else:
            self._path().mkdir(parents=True, exist_ok=True)
            with self._path(METRICS).open('a') as f:
                f.write(line)

    def records(self) -> list[dict]:
        """The records of metrics.jsonl. A last line without its newline is
        a write that a kill cut short, and is not a record."""
        if not self.exists(METRICS):
            return []
        text = self._path(METRICS).read_text()
        lines = text.split('\n')
        if not text.endswith('\n'):
            lines = lines[:-1]
        try:
            return [json.loads(line) for line in lines if line.strip()]
        except ValueError as e:
            raise CamjaxError(f'{self.file(METRICS)} is damaged ({e})') from None

    def rewind(self, step: int) -> None:
        """Drop the records of steps after `step` (and a torn last line; records
        without a step, such as 'config_change', stay): a
        run resuming from its step-`step` checkpoint replays them, so
        metrics.jsonl of a killed and resumed run equals an uninterrupted
        one's (plus 'resume' markers)."""
        if not self.is_writer or not self.exists(METRICS):
            return
        torn = not self._path(METRICS).read_text().endswith('\n')
        records = self.records()
        kept = [r for r in records if 'step' not in r or r['step'] <= step]  # config_change
        if len(kept) != len(records):
            # A 'best' record names the best step but is written at the run's
            # end, after every other record: it goes with the steps after `step`.
            kept = [r for r in kept if r['kind'] != 'best']
        if len(kept) != len(records) or torn:
            self._write_atomic(METRICS, ''.join(json.dumps(r) + '\n' for r in kept))

    # -- label_stats.json ------------------------------------------------------
    def positive_rate(self, splits, *, record: bool = True):
        """Multi-label runs: the training split's positive rates (K,) float32,
        computed once and kept in label_stats.json, so a resumed run and its
        evaluations use the same. None for single-label data. `record=False`
        (evaluating a run, which must not change it) computes them when the
        run has no label_stats.json, and writes nothing."""
        if not splits.multilabel:
            return None
        if self.exists(LABEL_STATS):
            rate = self.read_json(LABEL_STATS)['positive_rate']
        else:
            rate = [float(r) for r in splits.positive_rate]
            if record:
                self.write_json(LABEL_STATS, {'positive_rate': rate,
                                              'class_names': list(splits.class_names)})
        return np.asarray(rate, np.float32)

    # -- other files -----------------------------------------------------------
    def write_json(self, name: str, payload, **kwargs) -> None:
        if self.is_writer:
            self._write_atomic(name, json.dumps(payload, indent=2, **kwargs))

    def read_json(self, name: str):
        return json.loads(self._path(name).read_text())

    def write_text(self, name: str, text: str) -> None:
        if self.is_writer:
            self._write_atomic(name, text)

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.is_writer:
            self._write_atomic(name, data)

    def write_arrays(self, name: str, *, overwrite: bool = True, **arrays) -> None:
        """Numpy arrays as `name` (.npz); with overwrite=False, only if absent."""
        if self.is_writer and (overwrite or not self.exists(name)):
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            self._write_atomic(name, buffer.getvalue())

    def read_arrays(self, name: str) -> dict:
        with np.load(io.BytesIO(self._path(name).read_bytes())) as data:
            return dict(data)

    def _write_atomic(self, name: str, content) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f'{path.name}.tmp'
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        tmp.replace(path)


def read_records(workdir: str) -> list[dict]:
    """The records of `workdir`'s metrics.jsonl ([] if there are none)."""
    return RunDir(workdir).records()
