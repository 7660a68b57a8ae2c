"""Import a torchvision-layout ResNet-18/50/101/152 `state_dict` as a camjax run.

    python -m camjax.convert --torch=model.pth --arch=resnet50_imagenet --out=DIR \
        [--config=configs/<name>.py[:variant]]

writes DIR/config.json and DIR/checkpoints/0/{params,batch_stats}: a run that
`train.init_from=DIR` (train, refine, sweep) and `--mode=eval --workdir=DIR`
read. It has no optimizer or loop state, so it cannot be resumed as training.
The file is read with `torch.load(weights_only=True)`: tensors only, no code
from the file runs. num_classes comes from `fc.weight`. config.json is the
given config file's (default: TFDS imagenet2012 at 224px with the ImageNet
mean/std, torchvision's preprocessing) with model.name = --arch. A key that maps
to nothing, a missing key or a wrong shape is a one-line error naming the key
(exit status 2), found before anything is written.
"""

import argparse
import os
import sys

import numpy as np

from camjax.errors import CamjaxError, ConfigError

# Flax names a compact module's unnamed submodules <Class>_<n> in call order
# (camjax/models/resnet.py): the stem is Conv_0/BatchNorm_0, blocks are
# numbered across all stages, and inside a block the convs and norms come in
# torchvision's order, the projection shortcut last.
TORCH_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
              ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
              ('batch_stats', 'var'): 'running_var'}
TORCH_MODULE = {'Conv': ('conv', 0), 'BatchNorm': ('bn', 1)}  # name, index in downsample
BLOCKS = {'BasicBlock': 2, 'Bottleneck': 3}  # convs before the shortcut's


def archs() -> list[str]:
    from camjax.models import MODELS
    return sorted(n for n in MODELS if n.startswith('resnet') and n.endswith('_imagenet'))


# =============================================================================
# Reading the PyTorch file
# =============================================================================
def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """{torch key: float32 array} of the state_dict in `path` (bare, or under a
    'state_dict' or 'model' key; a DataParallel 'module.' prefix stripped)."""
    try:
        import torch
    except ImportError:
        raise CamjaxError('reading a PyTorch checkpoint needs torch: pip install torch '
                          '(the CPU wheel is enough)') from None
    if not os.path.isfile(path):
        raise CamjaxError(f'--torch={path!r} is not a file')
    try:
        # weights_only: the unpickler accepts tensors and plain containers
        # only, so no code from the file runs.
        loaded = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file is the user's to fix
        # torch's message is paragraphs of advice; the reason is one of them.
        text = str(e).partition('WeightsUnpickler error:')[2] or str(e)
        reason = next((p for p in text.split('\n\n') if p.strip()), '')
        reason = ' '.join(reason.split()).split('. ')[0][:200]
        raise CamjaxError(f'{path} cannot be read as a weights-only PyTorch checkpoint '
                          f'({type(e).__name__}: {reason}); camjax reads tensors only, '
                          'so save a state_dict') from None
    for wrapper in ('state_dict', 'model'):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, dict):
        raise CamjaxError(f'{path} holds a {type(loaded).__name__}, not a state_dict')
    if loaded and all(str(k).startswith('module.') for k in loaded):
        loaded = {k[len('module.'):]: v for k, v in loaded.items()}
    arrays = {}
    for key, value in loaded.items():
        if key.endswith('num_batches_tracked'):  # BN's update counter; camjax has none
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise CamjaxError(f'{path}: {key!r} is a {type(value).__name__}, not a float tensor')
        arrays[key] = value.detach().to(torch.float32).numpy()
    return arrays


# =============================================================================
# The mapping
# =============================================================================
def torch_key(path: tuple[str, ...], stage_sizes) -> str:
    """The torchvision state_dict key of camjax variable `path`, e.g.
    ('params', 'Bottleneck_3', 'Conv_1', 'kernel') -> 'layer2.0.conv2.weight'."""
    from camjax.models import CLASSIFIER
    collection, *modules, leaf = path
    names, convs = [], None
    for module in modules:
        kind, _, index = module.rpartition('_')
        if module == CLASSIFIER:
            names.append('fc')
        elif kind in BLOCKS:
            convs, i = BLOCKS[kind], int(index)
            for stage, size in enumerate(stage_sizes):
                if i < size:
                    names.append(f'layer{stage + 1}.{i}')
                    break
                i -= size
        elif kind in TORCH_MODULE and convs is None and index == '0':  # the stem
            names.append(f'{TORCH_MODULE[kind][0]}1')
        elif kind in TORCH_MODULE and convs is not None:
            name, in_downsample = TORCH_MODULE[kind]
            i = int(index)
            names.append(f'{name}{i + 1}' if i < convs else f'downsample.{in_downsample}')
    if len(names) != len(modules) or (collection, leaf) not in TORCH_LEAF:
        raise CamjaxError(f'camjax variable {"/".join(path)} has no torchvision counterpart')
    return '.'.join([*names, TORCH_LEAF[collection, leaf]])


def to_camjax(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    """A torch tensor in camjax's layout for variable `path`."""
    if path[-1] == 'kernel' and value.ndim == 4:
        # torch Conv2d weights are OIHW, flax Conv kernels HWIO (NHWC inputs);
        # both are cross-correlations, so no spatial flip.
        return value.transpose(2, 3, 1, 0)
    if path[-1] == 'kernel' and value.ndim == 2:
        # torch Linear computes x @ W.T with W (K, C); the CAM head's Dense
        # computes x @ W with W (C, K) (camjax/models/layers.py, cam_head).
        return value.T
    # BatchNorm: the same eval formula and eps (1e-5, layers.conv_and_norm);
    # flax's momentum 0.9 weights the old average, torch's 0.1 the new batch.
    return value


def _torch_shape(camjax_shape: tuple, path: tuple[str, ...]) -> tuple:
    """The torch-layout shape that `to_camjax` turns into `camjax_shape`."""
    if path[-1] == 'kernel' and len(camjax_shape) == 4:
        h, w, i, o = camjax_shape
        return (o, i, h, w)
    return tuple(reversed(camjax_shape)) if path[-1] == 'kernel' else tuple(camjax_shape)


def _natural(key: str):
    """Sort key putting layer1.2 before layer1.10 (errors name the first)."""
    return [(int(part), '') if part.isdigit() else (-1, part) for part in key.split('.')]


def convert(state_dict: dict[str, np.ndarray], arch: str, *, source: str = 'state_dict'):
    """(variables {'params', 'batch_stats'} as nested dicts of float32 arrays,
    num_classes) of `arch` holding the weights of `state_dict`. Every camjax
    variable is filled from exactly one torch key and every torch key is
    used; otherwise a CamjaxError names the key."""
    import flax.traverse_util

    from camjax.models import build_model
    from camjax.training.state import variable_shapes

    if arch not in archs():
        raise CamjaxError(f'--arch={arch!r} is not one of {archs()}')
    if 'fc.weight' not in state_dict:
        raise CamjaxError(f'{source}: missing key fc.weight (the classifier), so the class '
                          'count is unknown')
    if state_dict['fc.weight'].ndim != 2:
        raise CamjaxError(f'{source}: fc.weight has shape {state_dict["fc.weight"].shape}, '
                          'not (num_classes, channels)')
    num_classes = state_dict['fc.weight'].shape[0]
    model = build_model(arch, num_classes=num_classes)
    # Shapes only (jax.eval_shape): nothing is initialized. Any input size
    # gives the same variables; 64 keeps the trace cheap.
    shapes = variable_shapes(model, 64)
    plan = {}  # camjax path -> torch key
    for collection in ('params', 'batch_stats'):
        for key in shapes[collection]:
            path = (collection, *key.split('/'))
            plan[path] = torch_key(path, model.stage_sizes)
    assert len(set(plan.values())) == len(plan), 'two camjax variables map to one torch key'
    extra = sorted(set(state_dict) - set(plan.values()), key=_natural)
    missing = sorted(set(plan.values()) - set(state_dict), key=_natural)
    if extra or missing:
        parts = [f'{what} key {keys[0]}' + (f' (and {len(keys) - 1} more)' if keys[1:] else '')
                 for what, keys in (('unexpected', extra), ('missing', missing)) if keys]
        raise CamjaxError(f'{source} does not fit {arch}: {"; ".join(parts)}')
    flat = {}
    for path, key in plan.items():
        wanted = shapes[path[0]]['/'.join(path[1:])]
        if state_dict[key].shape != _torch_shape(wanted, path):
            raise CamjaxError(f'{source}: {key} has shape {tuple(state_dict[key].shape)}, '
                              f'{arch} needs {_torch_shape(wanted, path)}')
        flat[path] = np.ascontiguousarray(to_camjax(state_dict[key], path))
    variables = flax.traverse_util.unflatten_dict(flat)
    return variables, num_classes


# =============================================================================
# The run directory
# =============================================================================
def run_config(arch: str, config_arg: str | None = None):
    """The converted run's config: `config_arg`'s (a configs/*.py file, with
    ':variant' words), or ImageNet's input, with model.name = `arch` (the
    file's model dtype and conv_impl kept) and mode 'train' with no init_from:
    it describes a trained run."""
    import jax

    from camjax.config.files import load_config_file
    from camjax.config.presets import imagenet2012
    from camjax.config.schema import base_config, resolve_device_sizes, validate
    if config_arg:
        config = load_config_file(config_arg)
        model = {k: config.model[k] for k in ('dtype', 'conv_impl') if k in config.model}
    else:
        config, model = base_config(), {}
        imagenet2012(config.dataset)  # 224px, ImageNet mean/std, as configs/imagenet_*.py
    config.model = dict(name=arch, **model)
    config.mode, config.train.init_from = 'train', ''
    # As camjax.main records a run's config: per-device batch sizes resolved.
    resolve_device_sizes(config, num_devices=jax.device_count())
    validate(config, num_devices=jax.device_count())
    return config


def write_run(out: str, config, variables: dict, *, source: str) -> None:
    """config.json (through RunDir) and checkpoints/0 (through
    camjax.checkpoint) in `out`, which must be new or empty."""
    import jax

    from camjax import checkpoint
    from camjax.rundir import RunDir
    _require_new_dir(out)
    checkpoint.save_model_variables(out, 0, jax.tree.map(jax.numpy.asarray, variables),
                                    source=source)
    RunDir(out).create(config)  # last: a directory with config.json is a complete run


def _require_new_dir(out: str) -> None:
    from camjax import paths
    paths.check_supported(out)
    path = paths.resolve(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CamjaxError(f'--out={out!r} already exists and is not empty; pick a new directory')


def convert_file(torch_path: str, arch: str, out: str, *, config_arg: str | None = None) -> int:
    """The whole command; returns num_classes. Everything is checked before
    anything is written."""
    _require_new_dir(out)
    if arch not in archs():
        raise CamjaxError(f'--arch={arch!r} is not one of {archs()}')
    config = run_config(arch, config_arg)
    variables, num_classes = convert(load_state_dict(torch_path), arch, source=torch_path)
    write_run(out, config, variables, source=torch_path)
    return num_classes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog='python -m camjax.convert', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: _fail(message)
    parser.add_argument('--torch', required=True, help='PyTorch state_dict file (.pth)')
    parser.add_argument('--arch', required=True, help=f'one of {", ".join(archs())}')
    parser.add_argument('--out', required=True, help='new camjax run directory')
    parser.add_argument('--config', help='configs/<name>.py[:variant] whose dataset etc. the '
                        'run gets (default: ImageNet at 224px)')
    args = parser.parse_args(argv)
    try:
        num_classes = convert_file(args.torch, args.arch, args.out, config_arg=args.config)
    except ConfigError as e:  # as camjax.main reports them
        _fail(f'config: {e}')
    except CamjaxError as e:
        _fail(str(e))
    print(f'camjax: wrote {args.arch} ({num_classes} classes) from {args.torch} to {args.out}')


def _fail(message: str) -> None:
    print(f'camjax: error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
    main()
