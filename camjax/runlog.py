"""What a run prints and writes: progress lines, and metrics.jsonl (one JSON
object per line; train windows, evals, resume markers). Only process 0 writes."""

import json
import os
import time

import jax
import numpy as np


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class RunLog:
    def __init__(self, workdir: str):
        self._workdir = workdir
        self._path = os.path.join(workdir, 'metrics.jsonl')
        self._is_writer = jax.process_index() == 0
        if self._is_writer:
            os.makedirs(workdir, exist_ok=True)

    def write(self, record: dict) -> None:
        if self._is_writer:
            with open(self._path, 'a') as f:
                f.write(json.dumps(record) + '\n')

    def write_json(self, name: str, payload: dict) -> None:
        if self._is_writer:
            with open(os.path.join(self._workdir, name), 'w') as f:
                json.dump(payload, f, indent=2)

    def write_arrays(self, name: str, **arrays) -> None:
        """Numpy arrays as `name` (.npz), unless that file already exists."""
        path = os.path.join(self._workdir, name)
        if self._is_writer and not os.path.exists(path):
            np.savez_compressed(path, **arrays)

    def print(self, line: str) -> None:
        if self._is_writer:
            print(line, flush=True)


class Throughput:
    """Images/s and ETA over the window since the last `tick`."""

    def __init__(self, start_step: int):
        self._step, self._time = start_step, time.perf_counter()

    def tick(self, step: int, *, batch_size: int, total_steps: int) -> tuple[float, float]:
        now = time.perf_counter()
        steps = max(step - self._step, 1)
        per_step = (now - self._time) / steps
        self._step, self._time = step, now
        return batch_size / per_step, per_step * (total_steps - step)


def read_records(workdir: str) -> list[dict]:
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
