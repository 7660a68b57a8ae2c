"""Workdirs and data dirs on an object store (camjax.paths): every run-file,
lock, checkpoint-directory and data-folder access goes through etils.epath.

`fake_bucket` serves `gs://bucket/...` from a local folder through epath's
own mock backend, with an object store's limits: no append, and nothing
reaches the local file system under a mangled name (`os.path.abspath`
turns `gs://bucket/run` into `<cwd>/gs:/bucket/run`). Orbax's array bytes go
(and their shapes, in TensorStore's metadata) go through TensorStore's own
gcs driver, which needs the network, so saving and restoring arrays in the
fake bucket is not tested here; the directory logic around them (steps,
items, moving a damaged save aside) is.
"""

import ast
import json
import os
import pathlib
import shutil
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, small_config
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils
from PIL import Image

from camjax import checkpoint, lock, parallel, paths
from camjax.data.folders import decode_image, list_imagefolder
from camjax.errors import CamjaxError
from camjax.rundir import RunDir
from camjax.training.state import TrainState

BUCKET = 'gs://bucket'


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
    """`gs://bucket/...` lives in tmp_path/bucket; returns that folder. The
    working directory is an empty tmp_path/cwd, so that a mangled path would
    show up there."""
    store = tmp_path / 'bucket'
    store.mkdir()
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def local(path):
        path = os.fspath(path)
        return str(store) + path[len(BUCKET):] if path.startswith(BUCKET) else path

    def one_path(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    def two_paths(original, path, dst, *args, **kwargs):
        return original(local(path), local(dst), *args, **kwargs)

    def open_(original, path, mode):
        if os.fspath(path).startswith(BUCKET) and 'a' in mode:
            raise OSError('object stores cannot append')
        return original(local(path), mode)

    def listing(original, path):
        return original(local(path))

    def walk(original, top, **kwargs):
        for root, dirs, files in original(local(top), **kwargs):
            yield root.replace(str(store), BUCKET, 1), dirs, files

    def glob(original, pattern):
        return [p.replace(str(store), BUCKET, 1) for p in original(local(pattern))]

    # A flat bucket: Orbax would ask Google's API whether it is hierarchical.
    monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
    with epath_testing.mock_epath(
            open=open_, exists=one_path, isdir=one_path, listdir=listing, glob=glob,
            walk=walk, makedirs=one_path, mkdir=one_path, remove=one_path, rmtree=one_path,
            stat=one_path, rename=two_paths, replace=two_paths, copy=two_paths):
        yield store
    assert not any(cwd.iterdir()), f'written under a mangled local path: {list(cwd.iterdir())}'


def test_is_remote_and_resolve_keep_a_uri_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.is_remote('gs://b/run') and not paths.is_remote('runs/x')
    assert str(paths.resolve('gs://b/run')) == 'gs://b/run'
    assert str(paths.resolve('runs/x')) == str(tmp_path / 'runs' / 'x')


def test_an_object_store_without_its_packages_is_one_line(monkeypatch):
    monkeypatch.setattr(paths, '_installed', lambda module: module == 'gcsfs')
    with pytest.raises(CamjaxError, match=r"^gs://b/run: a gs:// path needs "
                                          r"google.cloud.storage; install them with pip "
                                          r"install -e '.\[gs\]'$"):
        paths.check_supported('gs://b/run')
    paths.check_supported('runs/local')  # local paths need nothing


def test_a_run_directory_on_an_object_store(fake_bucket):
    rundir = RunDir(f'{BUCKET}/run')
    rundir.create(small_config())
    for step in (2, 4, 6):
        rundir.append({'kind': 'train', 'step': step})
    rundir.rewind(4)
    rundir.write_arrays('eval/predictions.npz', labels=np.arange(5))

    local = fake_bucket / 'run'
    assert json.loads((local / 'config.json').read_text()) == json.loads(
        json.dumps(small_config().to_dict(), sort_keys=True, default=str))
    assert [r['step'] for r in rundir.records()] == [2, 4]
    assert [json.loads(line)['step'] for line in
            (local / 'metrics.jsonl').read_text().splitlines()] == [2, 4]
    np.testing.assert_array_equal(rundir.read_arrays('eval/predictions.npz')['labels'],
                                  np.arange(5))
    assert sorted(p.name for p in local.iterdir()) == ['config.json', 'eval', 'metrics.jsonl']
    assert RunDir(f'{BUCKET}/run').trained_config().seed == small_config().seed
    with pytest.raises(CamjaxError, match='seed: 0 -> 3'):
        rundir.create(small_config(seed=3))


def test_the_lock_on_an_object_store(fake_bucket, capsys):
    workdir = f'{BUCKET}/run'
    lock_file = fake_bucket / 'run' / lock.LOCK
    with lock.held(workdir):
        assert json.loads(lock_file.read_text())['pid'] == os.getpid()
        lock.check_free(workdir)  # this process's own lock
    assert not lock_file.exists()

    # A live holder on this host (our parent process) is refused, naming it.
    lock_file.parent.mkdir(exist_ok=True)
    lock_file.write_text(json.dumps({'pid': os.getppid(), 'host': socket.gethostname()}))
    for attempt in (lock.check_free, lock.acquire):
        with pytest.raises(CamjaxError, match=f'in use by PID {os.getppid()}'):
            attempt(workdir)
    # Another host: camjax cannot tell, so it is refused too.
    lock_file.write_text(json.dumps({'pid': 1, 'host': 'elsewhere'}))
    with pytest.raises(CamjaxError, match='another host'):
        lock.acquire(workdir)
    # A dead holder on this host is taken over with a warning.
    lock_file.write_text(json.dumps({'pid': 2**22 + 7, 'host': socket.gethostname()}))
    lock.acquire(workdir)
    try:
        assert 'taking over the lock of PID 4194311' in capsys.readouterr().err
        assert json.loads(lock_file.read_text())['pid'] == os.getpid()
    finally:
        lock.release(workdir)
    assert not lock_file.exists()


def _state(step: int) -> TrainState:
    state = TrainState(step=jnp.int32(step), params={'w': jnp.full((4, 3), float(step))},
                       batch_stats={'mean': jnp.arange(3.0) + step},
                       opt_state={'momentum': jnp.full((4, 3), -float(step))})
    return jax.device_put(state, parallel.replicated(parallel.make_mesh()))


def test_checkpoint_directories_on_an_object_store(tmp_path, fake_bucket, capsys):
    """Steps, items and shapes of saves read through the object store, and
    a damaged save is moved aside there."""
    workdir = str(tmp_path / 'local-run')
    saver = checkpoint.Checkpointer(workdir, keep=3)
    for step in (1, 2):
        saver.save(step, _state(step), meta={'step': step}, data_state={'pos': step})
    saver.wait()
    saver.close()
    shutil.copytree(workdir, fake_bucket / 'run')  # uploaded
    remote = f'{BUCKET}/run'
    steps = checkpoint.saved_steps(remote)
    assert steps == [1, 2]

    checkpointer = checkpoint.Checkpointer(remote, keep=3)
    try:
        newest = checkpointer.latest_step()
        assert newest == steps[-1]
        latest = checkpointer._latest  # noqa: SLF001 -- the manager of checkpoints/
        assert 'params' in checkpoint._saved_items(latest, newest)  # noqa: SLF001
        target = checkpointer._move_aside(latest, newest, 'test')  # noqa: SLF001
    finally:
        checkpointer.close()
    assert target == f'{remote}/damaged/checkpoints-{newest}'
    assert (fake_bucket / 'run' / 'damaged' / f'checkpoints-{newest}' / 'params').is_dir()
    assert checkpoint.saved_steps(remote) == [1]
    assert 'is damaged (test)' in capsys.readouterr().err


def test_an_image_folder_on_an_object_store(fake_bucket):
    rng = np.random.default_rng(0)
    for split in ('train', 'test'):
        for name in ('cat', 'dog'):
            folder = fake_bucket / 'data' / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (8, 6, 3), np.uint8)).save(
                    folder / f'{i}.png')
    cfg = small_config().dataset
    train, test, classes, multilabel = list_imagefolder(f'{BUCKET}/data', cfg)
    assert classes == ('cat', 'dog') and not multilabel
    assert train.files[0] == f'{BUCKET}/data/train/cat/0.png'
    assert list(train.labels) == [0, 0, 1, 1] and len(test.files) == 4
    np.testing.assert_array_equal(decode_image(train.files[3]),
                                  np.asarray(Image.open(fake_bucket / 'data/train/dog/1.png')))


# Modules that own run files, checkpoint directories and data folders: their
# file-system access goes through epath, never os.path or open().
EPATH_ONLY = ('camjax/rundir.py', 'camjax/checkpoint.py', 'camjax/data/folders.py',
              'camjax/config/preflight.py', 'camjax/evaluation/evaluate.py',
              'camjax/analysis/analyze.py', 'camjax/analysis/figures.py',
              'camjax/training/refine.py', 'camjax/training/loop.py', 'camjax/data/sources.py')
FS_CALLS = {'isdir', 'isfile', 'exists', 'listdir', 'scandir', 'makedirs', 'replace', 'rename',
            'remove', 'unlink', 'abspath', 'relpath', 'realpath', 'walk', 'glob'}


@pytest.mark.parametrize('module', EPATH_ONLY)
def test_run_and_data_files_are_reached_through_epath(module):
    tree = ast.parse(pathlib.Path(ROOT, module).read_text())
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == 'open':
            found.append(f'line {node.lineno}: open()')
        elif (isinstance(func, ast.Attribute) and func.attr in FS_CALLS
              and ast.unparse(func.value) in ('os', 'os.path', 'shutil', 'glob')):
            found.append(f'line {node.lineno}: {ast.unparse(func)}()')
    assert not found, f'{module} bypasses epath: {found}'
