"""Stopping a training or refine loop cleanly on SIGTERM (preemption) or SIGINT.

The loops ask `StopSignals.requested(step)` after every step. A signal only
raises a flag, so the current step finishes; the loop then saves a
checkpoint at that step and raises `Stopped`, which the command line turns
into one line and exit status 0 (SIGTERM) or 130 (SIGINT). A second signal
while the first is being handled terminates at once, without saving (the
checkpoint integrity checks skip a save it cut short).

With more than one process, SIGTERM belongs to JAX's preemption sync manager
(started by `jax.distributed.initialize`): `reached_preemption_sync_point`
becomes true on every process at the same step, so they all save that step.
A SIGINT (a terminal's Ctrl-C) that reaches one process only is passed on
to the preemption sync manager as a SIGTERM, so it too stops every process
at one step.
"""

import dataclasses
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

EXIT_STATUS = {'SIGTERM': 0, 'SIGINT': 130}


@dataclasses.dataclass
class Stopped(Exception):  # noqa: N818 -- a request honoured, not an error
    """The loop stopped on `signal_name` after saving a checkpoint at `step`."""
    signal_name: str
    step: int

    def __str__(self):
        return f'stopped by {self.signal_name} at step {self.step}'


def _multi_process() -> bool:
    """More than one process: `jax.distributed.initialize` started JAX's
    preemption sync manager, which owns SIGTERM."""
    return jax.process_count() > 1


def _preemption_service() -> bool:
    """Does JAX's preemption sync manager (which owns SIGTERM) run?"""
    from jax._src import distributed  # jax 0.10 has no public accessor for it
    return getattr(distributed.global_state, 'preemption_sync_manager', None) is not None


def _reached_preemption(step: int) -> bool:
    try:
        return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # the preemption service is disabled (jax_enable_preemption_service)
        return False


class StopSignals:
    """Context manager: while open, SIGINT (and SIGTERM when no preemption
    service owns it) request a stop instead of killing the process. Nested
    uses (the command line around the whole run, each loop around its steps)
    share one request, so a signal during start-up stops the loop after its
    first step.

    `before_jax=True` (the command line, before `jax.distributed` starts)
    takes SIGTERM without asking JAX how many processes there are, which
    would start its backend too early; `jax.distributed.initialize` then
    hands SIGTERM to its preemption sync manager."""

    def __init__(self, *, before_jax: bool = False):
        self._before_jax = before_jax

    _received: str | None = None  # shared by every instance
    _previous: dict = {}
    _depth = 0

    def __enter__(self):
        cls = StopSignals
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only
        if cls._depth == 0:
            cls._received = None
            owned = self._before_jax or not _multi_process()
            for name in ['SIGINT'] + (['SIGTERM'] if owned else []):
                signum = getattr(signal, name)
                cls._previous[signum] = signal.signal(signum, cls._handle)
        cls._depth += 1
        return self

    def __exit__(self, *exc):
        cls = StopSignals
        if threading.current_thread() is threading.main_thread():
            cls._depth -= 1
            if cls._depth == 0:
                for signum, handler in cls._previous.items():
                    signal.signal(signum, handler)
                cls._previous.clear()
        return False

    @staticmethod
    def _handle(signum, frame):
        if StopSignals._received is not None:  # a second signal: stop now, without saving
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        StopSignals._received = signal.Signals(signum).name
        if signum == signal.SIGINT and _multi_process() and _preemption_service():
            # SIGINT reached this process only; as a SIGTERM to itself it goes
            # to JAX's preemption sync manager, so every process stops at the
            # same step (this one still reports SIGINT).
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step: int) -> str | None:
        """The signal's name if the loop should stop after `step`, else None.
        Every process must call this at every step (the sync point needs it)."""
        if _multi_process() and _preemption_service():
            # Only at the sync point: a process stopping alone would save
            # while the others run the next step's collectives.
            if _reached_preemption(step):
                return StopSignals._received or 'SIGTERM'
            return None
        return StopSignals._received
