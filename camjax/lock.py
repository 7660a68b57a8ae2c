"""One process per workdir: `<workdir>/lock`.

The lock is an exclusive `flock` on the file, which the kernel releases when
its process dies however it dies, and the file names the holder (PID, host,
start time) for the refusal message. A lock file left by a process that died
on this host (SIGKILL) is taken over with a warning. One naming another host
is refused, since this host cannot tell whether that process still runs.

Locks are re-entrant within a process (the command line and the library's
loops both take it) and released when the last holder lets go. Only
process 0 of a multi-process run takes it.

On an object store (a `gs://` workdir) there is no flock: the lock file is
checked and then written, which guards against a second run started by
hand but not against two started in the same instant. A holder on this host
whose PID no longer runs is taken over as above.
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import time

from etils import epath

from camjax import paths
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


def _in_use(path: str, holder: dict) -> CamjaxError:
    return CamjaxError(f'{path.rsplit("/", 1)[0]} is in use by {_describe(holder)}; wait for '
                       'that run to end or stop it, or pick another --workdir')


def _other_host(path: str, holder: dict) -> CamjaxError:
    return CamjaxError(f'{path} names {_describe(holder)}, another host, so camjax cannot tell '
                       f'whether that run still runs; if it has stopped, delete {path}')


def _flock_or_refuse(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise _in_use(path, holder) from None


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


def _lock_path(workdir) -> str:
    return str(paths.resolve(workdir) / LOCK)


def _remote_holder(path: str) -> dict:
    """The holder an object-store lock file names ({} if there is none); one
    whose process is known dead (same host, PID gone) is announced and
    dropped. A live holder, or one on another host, is refused."""
    file = epath.Path(path)
    if not file.exists():
        return {}
    try:
        holder = json.loads(file.read_text())
    except ValueError:
        holder = {}
    host = socket.gethostname()
    if holder.get('host') == host and not _pid_alive(holder.get('pid')):
        return holder
    if holder.get('host') not in (None, host):
        raise _other_host(path, holder)
    raise _in_use(path, holder)


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's process, or no PID: assume it runs
    return True


def _took_over(previous: dict) -> None:
    print(f'camjax: warning: taking over the lock of {_describe(previous)}, which is no '
          'longer running (it was killed)', file=sys.stderr, flush=True)


def _holder_record() -> bytes:
    return json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                       'started': time.strftime('%Y-%m-%d %H:%M:%S')}).encode()


def check_free(workdir: str) -> None:
    """Refuse early, writing nothing, if another process holds `workdir`'s
    lock (`acquire` checks again, atomically)."""
    path = _lock_path(workdir)
    if path in _held:
        return
    if paths.is_remote(path):
        _remote_holder(path)
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    _flock_or_refuse(fd, path)
    os.close(fd)


def acquire(workdir: str) -> None:
    path = _lock_path(workdir)
    if path in _held:
        _held[path][1] += 1
        return
    if paths.is_remote(path):
        previous = _remote_holder(path)
        if previous:
            _took_over(previous)
        epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
        epath.Path(path).write_bytes(_holder_record())
        _held[path] = [None, 1]
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = _open_locked(path)
    previous = _holder(fd)
    if previous:
        if previous.get('host') != socket.gethostname():
            os.close(fd)
            raise _other_host(path, previous)
        _took_over(previous)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, _holder_record())
    os.fsync(fd)
    _held[path] = [fd, 1]


def release(workdir: str) -> None:
    path = _lock_path(workdir)
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[path]
        if entry[0] is None:  # object store
            epath.Path(path).unlink(missing_ok=True)
            return
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
