"""One process per workdir: `<workdir>/lock`.

The lock is an exclusive `flock` on the file, which the kernel releases when
its process dies however it dies, and the file names the holder (PID, host,
start time) for the refusal message. A lock file left by a process that died
on this host (SIGKILL) is taken over with a warning. One naming another host
is refused, since this host cannot tell whether that process still runs.

Locks are re-entrant within a process (the command line and the library's
loops both take it) and released when the last holder lets go. Only
process 0 of a multi-process run takes it.
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import time

from camjax.errors import CamjaxError

LOCK = 'lock'
_held: dict[str, list] = {}  # lock path -> [file descriptor, holders in this process]


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors='replace')
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def _describe(holder: dict) -> str:
    return (f'PID {holder.get("pid", "?")} on host {holder.get("host", "?")}'
            f' (since {holder.get("started", "?")})')


def _flock_or_refuse(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise CamjaxError(f'{os.path.dirname(path)} is in use by {_describe(holder)}; '
                          'wait for that run to end or stop it, or pick another '
                          '--workdir') from None


def _open_locked(path: str) -> int:
    """An fd of `path` holding its flock; CamjaxError if another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        _flock_or_refuse(fd, path)
        try:  # the holder may have removed the file between our open and flock
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def check_free(workdir: str) -> None:
    """Refuse early, writing nothing, if another process holds `workdir`'s
    lock (`acquire` checks again, atomically)."""
    path = os.path.abspath(os.path.join(workdir, LOCK))
    if path in _held:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    _flock_or_refuse(fd, path)
    os.close(fd)


def acquire(workdir: str) -> None:
    path = os.path.abspath(os.path.join(workdir, LOCK))
    if path in _held:
        _held[path][1] += 1
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = _open_locked(path)
    previous, host = _holder(fd), socket.gethostname()
    if previous:
        if previous.get('host') != host:
            os.close(fd)
            raise CamjaxError(f'{path} names {_describe(previous)}, another host, so camjax '
                              'cannot tell whether that run still runs; if it has stopped, '
                              f'delete {path}')
        print(f'camjax: warning: taking over the lock of {_describe(previous)}, which is no '
              'longer running (it was killed)', file=sys.stderr, flush=True)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({'pid': os.getpid(), 'host': host,
                             'started': time.strftime('%Y-%m-%d %H:%M:%S')}).encode())
    os.fsync(fd)
    _held[path] = [fd, 1]


def release(workdir: str) -> None:
    path = os.path.abspath(os.path.join(workdir, LOCK))
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[path]
        os.unlink(path)  # while still locked, so no one takes a lock on a dying file
        os.close(entry[0])


@contextlib.contextmanager
def held(workdir: str, *, writer: bool = True):
    """Hold `workdir`'s lock for the block (no-op when not the writing process)."""
    if not writer:
        yield
        return
    acquire(workdir)
    try:
        yield
    finally:
        release(workdir)
