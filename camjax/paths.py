"""Paths of workdirs, checkpoints and data: local or on an object store.

Every run-directory, checkpoint and data-folder path goes through
`etils.epath`, the path API that Orbax and TFDS use too, so a `gs://` (or
`s3://`) workdir or data dir works with no code change. `os.path` would
mangle one: `os.path.abspath('gs://b/run')` is `<cwd>/gs:/b/run`.

Object stores have no atomic rename, no append and no `flock`; the callers
that rely on those (rundir.py, lock.py) ask `is_remote` and say what they do
instead.
"""

import importlib.util
import os

from etils import epath

from camjax.errors import CamjaxError

# What a URI scheme needs installed besides camjax's own dependencies:
# epath's fsspec file system, and for gs:// the client Orbax asks about the
# bucket. pyproject.toml's extras of the same names install them.
_NEEDS = {'gs': ('gcsfs', 'google.cloud.storage'), 's3': ('s3fs',)}


def is_remote(path) -> bool:
    """True for a URI such as `gs://bucket/run` (not a local file system)."""
    return '://' in os.fspath(path)


def resolve(path) -> epath.Path:
    """`path` as an epath.Path; a local one made absolute (Orbax wants
    absolute directories, and the lock keys on them)."""
    return epath.Path(path if is_remote(path) else os.path.abspath(os.fspath(path)))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package (google.cloud)
        return False


def check_supported(path) -> None:
    """A one-line CamjaxError, before anything is written, when `path` is on
    an object store whose file-system packages are not installed (else the
    first read would fail deep inside epath or Orbax)."""
    if not path or not is_remote(path):
        return
    scheme = os.fspath(path).partition('://')[0]
    if scheme not in _NEEDS:
        raise CamjaxError(f'{path}: {scheme}:// paths are not supported; use a local path, '
                          f'or {", ".join(f"{s}://" for s in _NEEDS)}')
    missing = [m for m in _NEEDS[scheme] if not _installed(m)]
    if missing:
        raise CamjaxError(f'{path}: a {scheme}:// path needs {", ".join(missing)}; install '
                          f"them with pip install -e '.[{scheme}]'")
