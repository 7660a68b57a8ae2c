"""The real-data archives of ../shared/data, unpacked once into a cache."""

import os
import shutil
import subprocess
import tempfile

UNPACKED = '.unpacked'  # marker: the archive was unpacked completely


def unpacked(archive: str, target: str, *, inner: str = '', expect: tuple[str, ...]) -> str:
    """`target`, holding `archive`'s folder `inner` ('' : the archive's top
    level), unpacked now unless a complete earlier unpacking is there; the
    paths in `expect` must exist in it. Atomic: unpacked beside `target`,
    then renamed, so an interrupted or concurrent run never leaves half."""
    target = os.path.abspath(os.path.expanduser(target))
    if os.path.exists(os.path.join(target, UNPACKED)):
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix='.unpacking-')
    try:
        print(f'unpacking {os.path.normpath(archive)} into {target} (once) ...', flush=True)
        if shutil.which('tar'):  # ~10x faster than tarfile on many small files
            subprocess.run(['tar', '-xzf', archive, '-C', tmp, '--no-same-owner'], check=True)
        else:
            import tarfile
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter='data')
        folder = os.path.join(tmp, inner)
        missing = [p for p in expect if not os.path.exists(os.path.join(folder, p))]
        if missing:
            names = ', '.join(os.path.join(inner, p) for p in missing)
            raise SystemExit(f'{archive} has no {names}')
        open(os.path.join(folder, UNPACKED), 'w').close()
        if os.path.exists(target):  # an incomplete earlier unpacking
            shutil.rmtree(target)
        try:
            os.rename(folder, target)
        except OSError:  # another run finished first
            if not os.path.exists(os.path.join(target, UNPACKED)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
