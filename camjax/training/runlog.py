"""What a run prints and appends to its metrics.jsonl (through RunDir):
progress lines, train windows, evals, resume markers. Only process 0 prints."""

import time

import jax

from camjax.rundir import RunDir


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class RunLog:
    def __init__(self, rundir: RunDir):
        self.rundir = rundir

    def write(self, record: dict) -> None:
        self.rundir.append(record)

    def print(self, line: str) -> None:
        if jax.process_index() == 0:
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
