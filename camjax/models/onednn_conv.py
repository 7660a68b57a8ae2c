"""`conv`: a convolution whose CPU forward, input gradient and weight
gradient run in oneDNN (the library PyTorch's CPU convolutions use), called
from XLA through the FFI (`jax.ffi`). A prototype (issue 12, item 9).

The C++ handlers live in csrc/onednn_conv/onednn_conv.cc and are compiled on
first use with the system C++ compiler against the oneDNN wheels of the
`onednn` extra (`onednn-cpu-gomp`: libdnnl.so built with GNU OpenMP, installed
into <prefix>/lib; `onednn-devel-cpu-gomp`: the headers, <prefix>/include).
The shared library goes to csrc/onednn_conv/build/ (or $CAMJAX_ONEDNN_BUILD_DIR),
named after a hash of the source and flags, so an edited source rebuilds;
$CAMJAX_ONEDNN_LIB loads a library built otherwise (csrc/onednn_conv/CMakeLists.txt).
`available()` says whether it could be built and loaded.

Threading: by default each call cuts the batch into $CAMJAX_ONEDNN_PIECES (8)
slices run single-threaded on XLA's intra-op pool (dynamic claiming, robust to
other load); CAMJAX_ONEDNN_PIECES=0 makes one OpenMP-threaded oneDNN call.

Only float32 runs in oneDNN; other dtypes, explicitly sharded inputs and
non-CPU backends take `fast_conv` (same results to float32 rounding).
Parameters are nn.Conv's, so checkpoints are interchangeable.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from camjax.models.fast_conv import _conv, default_chunk, fast_conv

SRC = Path(__file__).resolve().parents[2] / 'csrc' / 'onednn_conv' / 'onednn_conv.cc'
_TARGETS = {'fwd': 'OnednnConvFwd', 'bwd_data': 'OnednnConvBwdData',
            'bwd_weights': 'OnednnConvBwdWeights'}
_PREFIX = 'camjax_onednn_conv_'


class OnednnUnavailable(RuntimeError):
    """oneDNN, its headers, the C++ source or a compiler is missing."""


def _dnnl_root() -> Path:
    """The prefix holding include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so."""
    env = os.environ.get('CAMJAX_ONEDNN_ROOT')  # when set, the only place looked at
    cands = [env] if env else [sys.prefix, sys.base_prefix, '/usr/local', '/usr']
    for c in cands:
        p = Path(c)
        if (p / 'include/oneapi/dnnl/dnnl.hpp').exists() and (p / 'lib/libdnnl.so').exists():
            return p
    raise OnednnUnavailable(
        "oneDNN headers/library not found (looked in $CAMJAX_ONEDNN_ROOT, sys.prefix, /usr); "
        "install them with pip install -e '.[onednn]'")


def _build_cmd(root: Path, out: Path) -> list[str]:
    cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if not cxx:
        raise OnednnUnavailable('no C++ compiler (g++/c++ or $CXX) to build the oneDNN conv')
    lib = (root / 'lib').resolve()
    return [cxx, '-O2', '-std=c++17', '-shared', '-fPIC', '-fopenmp',
            '-isystem', jax.ffi.include_dir(), '-isystem', str(root / 'include'), str(SRC),
            '-o', str(out), f'-L{lib}', '-ldnnl', f'-Wl,-rpath,{lib}']


def build(verbose: bool = False) -> Path:
    """Compile the handlers if no up-to-date build exists; returns the .so path.
    Concurrent builders (pytest-xdist workers) each write a temporary file and
    rename it into place, so a reader never sees a partial library."""
    if not SRC.exists():
        raise OnednnUnavailable(f'C++ source {SRC} not found (an editable install is needed)')
    root = _dnnl_root()
    build_dir = Path(os.environ.get('CAMJAX_ONEDNN_BUILD_DIR') or SRC.parent / 'build')
    cmd = _build_cmd(root, Path('OUT'))
    h = hashlib.sha256(SRC.read_bytes() + ' '.join(cmd).encode()).hexdigest()[:16]
    out = build_dir / f'{_PREFIX}{h}.so'
    if out.exists():
        return out
    build_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=build_dir)
    os.close(fd)
    try:
        r = subprocess.run(_build_cmd(root, Path(tmp)), capture_output=True, text=True)
        if r.returncode:
            errors = [line for line in r.stderr.splitlines() if 'error' in line]
            raise OnednnUnavailable(f'building {SRC.name} failed: '
                                    f'{(errors or r.stderr.splitlines() or ["?"])[0]}')
        if verbose:
            print(r.stderr, end='')
        os.replace(tmp, out)
        for old in build_dir.glob(f'{_PREFIX}*.so'):  # builds of earlier sources
            if old != out:
                old.unlink(missing_ok=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


_lock = threading.Lock()
_lib = None


def load() -> ctypes.CDLL:
    """Build if needed, load and register the FFI targets (CPU) once."""
    global _lib
    with _lock:
        if _lib is None:
            lib = ctypes.CDLL(os.environ.get('CAMJAX_ONEDNN_LIB') or str(build()))
            for name in _TARGETS.values():
                jax.ffi.register_ffi_target(_PREFIX + name, jax.ffi.pycapsule(getattr(lib, name)),
                                            platform='cpu')
            _lib = lib
    return _lib


def available() -> bool:
    """Whether the oneDNN conv can be used here (builds it on first call):
    False when oneDNN, a compiler or a working build is missing."""
    try:
        load()
    except OnednnUnavailable:
        return False
    return True


def impl_info(kind: str, x_shape, k_shape, strides, pads, threads: int = 1) -> str:
    """oneDNN's implementation name for a conv ('fwd', 'bwd_data', 'bwd_weights')
    on `threads` OpenMP threads, e.g. 'brgconv:avx512_core' or 'jit:avx512_core'."""
    lib = load()
    (n, h, w, c), (kh, kw, _, o) = x_shape, k_shape
    oh = (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1
    ow = (w + pads[1][0] + pads[1][1] - kw) // strides[1] + 1
    key = (ctypes.c_int64 * 16)(n, h, w, c, kh, kw, o, oh, ow, *strides, *pads[0], *pads[1],
                                threads)
    buf = ctypes.create_string_buffer(256)
    lib.OnednnConvImplInfo(ctypes.c_int64(list(_TARGETS).index(kind)), key, buf, 256)
    return buf.value.decode()


def pieces() -> int:
    """Batch slices per oneDNN call, from $CAMJAX_ONEDNN_PIECES (read at trace
    time): 0 runs one oneDNN call over the batch on OpenMP threads; n > 0 cuts
    the batch into n equal slices (fewer if it does not divide) run single-
    threaded on XLA's own intra-op pool, claimed dynamically (default 8)."""
    return int(os.environ.get('CAMJAX_ONEDNN_PIECES', 8))


def _attrs(strides, pads):
    (pt, pb), (pl, pr) = pads
    return dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pt),
                pb=np.int64(pb), pl=np.int64(pl), pr=np.int64(pr), pieces=np.int64(pieces()))


def _call(kind, out_shape, a, b, strides, pads):
    # Inside shard_map the result varies over the mesh axes its inputs vary
    # over, as lax's conv (the other branch of platform_dependent) says;
    # otherwise the two branches' types differ and tracing fails.
    varying = _varying(a) | _varying(b)
    out = jax.ffi.ffi_call(_PREFIX + _TARGETS[kind], jax.ShapeDtypeStruct(out_shape, jnp.float32),
                           vmap_method='sequential')(a, b, **_attrs(strides, pads))
    return lax.pcast(out, tuple(sorted(varying)), to='varying') if varying else out


def _varying(x) -> frozenset:
    """The shard_map mesh axes `x` varies over (none outside shard_map)."""
    return jax.typeof(x).manual_axis_type.varying


def _cotangent_for(ct, primal):
    """`ct` summed over the mesh axes it varies over and `primal` does not:
    the gradient of a replicated input, as shard_map's autodiff makes it."""
    extra = _varying(ct) - _varying(primal)
    return lax.psum(ct, tuple(sorted(extra))) if extra else ct


def _out_shape(x_shape, k_shape, strides, pads):
    return jax.eval_shape(lambda x, k: _conv(x, k, strides, pads),
                          jax.ShapeDtypeStruct(x_shape, jnp.float32),
                          jax.ShapeDtypeStruct(k_shape, jnp.float32)).shape


def _lax_grads(x, k, g, strides, pads):
    """(dx, dk) of lax's conv at the residuals (x, k): off the CPU. A vjp at
    the real arrays, so that inside shard_map the cotangent's varying axes
    match the output's."""
    return jax.vjp(lambda x_, k_: _conv(x_, k_, strides, pads), x, k)[1](g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def onednn_conv(x, k, strides, pads):
    """NHWC/HWIO float32 `lax.conv_general_dilated` run by oneDNN on CPU
    (lax's conv elsewhere). `pads` explicit ((top, bottom), (left, right))."""
    return _fwd(x, k, strides, pads)[0]


def _fwd(x, k, strides, pads):
    load()
    y_shape = _out_shape(x.shape, k.shape, strides, pads)
    y = lax.platform_dependent(
        x, k, cpu=lambda x, k: _call('fwd', y_shape, x, k, strides, pads),
        default=lambda x, k: _conv(x, k, strides, pads))
    return y, (x, k)


def _bwd(strides, pads, res, g):
    x, k = res
    return lax.platform_dependent(
        x, k, g, cpu=lambda x, k, g: (
            _cotangent_for(_call('bwd_data', x.shape, g, k, strides, pads), x),
            _cotangent_for(_call('bwd_weights', k.shape, x, g, strides, pads), k)),
        default=lambda x, k, g: _lax_grads(x, k, g, strides, pads))


onednn_conv.defvjp(_fwd, _bwd)


def conv(x, k, strides, pads, chunk=None):
    """`onednn_conv` for float32 unsharded inputs on the CPU backend, `fast_conv`
    otherwise (so 'onednn' needs no oneDNN build on a GPU/TPU host)."""
    sharded = any(any(getattr(jax.typeof(a).sharding, 'spec', ())) for a in (x, k))
    if (jax.default_backend() == 'cpu' and x.dtype == jnp.float32 and k.dtype == jnp.float32
            and not sharded):
        return onednn_conv(x, k, strides, pads)
    return fast_conv(x, k, strides, pads, chunk or default_chunk(k.shape[-1]))


if __name__ == '__main__':  # python -m camjax.models.onednn_conv: build and report
    print(build(verbose=True))
    print('loaded:', load())
