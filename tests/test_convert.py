"""camjax.convert: a torchvision ResNet state_dict becomes a camjax run whose
model gives PyTorch's logits, bad files are one-line errors that write
nothing, and LinR refinement starts from the converted run."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, file_hashes, run_cli

torch = pytest.importorskip('torch')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from torch_resnet import resnet  # noqa: E402

from camjax import convert  # noqa: E402
from camjax.checkpoint import restore_model_variables  # noqa: E402
from camjax.errors import CamjaxError  # noqa: E402
from camjax.models import build_model  # noqa: E402
from camjax.rundir import RunDir  # noqa: E402

NUM_CLASSES = 12  # the synthetic dataset's, so the refine smoke run can use the head


def _torch_model(depth: int, num_classes: int):
    """A torchvision-layout ResNet in eval mode with random BatchNorm affine
    parameters and running statistics, so that eval-mode BN matters."""
    torch.manual_seed(depth)
    net = resnet(depth, num_classes)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _arrays(net) -> dict:
    return {k: v.numpy() for k, v in net.state_dict().items()
            if not k.endswith('num_batches_tracked')}


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
    """(path of a saved ResNet-18 state_dict, its torch model)."""
    net = _torch_model(18, NUM_CLASSES)
    path = str(tmp_path_factory.mktemp('torch') / 'resnet18.pth')
    torch.save(net.state_dict(), path)
    return path, net


def _logit_difference(net, variables, arch: str) -> float:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x).numpy()
    model = build_model(arch, num_classes=expected.shape[1])
    # torch is NCHW, camjax NHWC.
    logits, _ = jax.jit(lambda v, images: model.apply(v, images, train=False))(
        variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    assert np.abs(expected).max() > 0.1  # a real comparison, not of near-zeros
    return float(np.abs(np.asarray(logits) - expected).max())


@pytest.mark.parametrize('depth', [18, 50])
def test_converted_model_gives_pytorch_logits(depth, resnet18_file):
    net = resnet18_file[1] if depth == 18 else _torch_model(50, 5)
    state_dict = convert.load_state_dict(resnet18_file[0]) if depth == 18 else _arrays(net)
    variables, num_classes = convert.convert(state_dict, f'resnet{depth}_imagenet')
    assert num_classes == net.fc.out_features
    # Every torch tensor filled exactly one camjax variable.
    assert sum(len(jax.tree.leaves(variables[n])) for n in variables) == len(state_dict)
    difference = _logit_difference(net, variables, f'resnet{depth}_imagenet')
    print(f'resnet{depth}: max |logit difference| {difference:.3g}')
    assert difference < 1e-4


def test_flax_names_map_to_torchvision_keys():
    stages = (3, 4, 6, 3)
    assert convert.torch_key(('params', 'Conv_0', 'kernel'), stages) == 'conv1.weight'
    assert convert.torch_key(('batch_stats', 'BatchNorm_0', 'var'), stages) == 'bn1.running_var'
    assert (convert.torch_key(('params', 'Bottleneck_3', 'Conv_1', 'kernel'), stages)
            == 'layer2.0.conv2.weight')
    assert (convert.torch_key(('params', 'Bottleneck_3', 'BatchNorm_3', 'scale'), stages)
            == 'layer2.0.downsample.1.weight')
    assert (convert.torch_key(('batch_stats', 'Bottleneck_15', 'BatchNorm_2', 'mean'), stages)
            == 'layer4.2.bn3.running_mean')
    assert convert.torch_key(('params', 'classifier', 'kernel'), stages) == 'fc.weight'
    # The classifier is the CAM head's W (C, K): torch's fc.weight (K, C) transposed.
    w = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(convert.to_camjax(w, ('params', 'classifier', 'kernel')), w.T)


def _renamed(sd):
    sd = dict(sd)
    sd['layer1.0.conv1.weigth'] = sd.pop('layer1.0.conv1.weight')
    return sd


BAD = {
    'renamed': (_renamed, 'unexpected key layer1.0.conv1.weigth; '
                          'missing key layer1.0.conv1.weight'),
    'extra': (lambda sd: {**sd, 'layer5.0.conv1.weight': sd['conv1.weight']},
              'unexpected key layer5.0.conv1.weight'),
    'missing': (lambda sd: {k: v for k, v in sd.items() if k != 'layer4.1.bn2.running_var'},
                'missing key layer4.1.bn2.running_var'),
    'wrong_shape': (lambda sd: {**sd, 'layer2.0.conv1.weight':  # stored HWIO, not OIHW
                                sd['layer2.0.conv1.weight'].transpose(2, 3, 1, 0)},
                    r'layer2.0.conv1.weight has shape \(3, 3, 64, 128\), resnet18_imagenet '
                    r'needs \(128, 64, 3, 3\)'),
    # ResNet-18's keys are a subset of ResNet-50's: the first one it lacks.
    'wrong_arch': (lambda sd: sd, 'does not fit resnet50_imagenet: missing key '
                                  r'layer1.0.bn3.bias \(and 164 more\)'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_a_state_dict_that_does_not_fit_names_the_key(case, resnet18_file):
    edit, message = BAD[case]
    arch = 'resnet50_imagenet' if case == 'wrong_arch' else 'resnet18_imagenet'
    with pytest.raises(CamjaxError, match=message):
        convert.convert(edit(_arrays(resnet18_file[1])), arch)


def _run_convert(*args):
    return subprocess.run([sys.executable, '-m', 'camjax.convert', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('case', ['renamed', 'wrong_shape'])
def test_cli_error_is_one_line_exit_2_and_writes_nothing(case, resnet18_file, tmp_path):
    edit, message = BAD[case]
    path = str(tmp_path / 'bad.pth')
    torch.save({k: torch.from_numpy(v) for k, v in edit(_arrays(resnet18_file[1])).items()}, path)
    out = tmp_path / 'out'
    result = _run_convert(f'--torch={path}', '--arch=resnet18_imagenet', f'--out={out}')
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('camjax: error: '), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_file_formats_and_refusals(resnet18_file, tmp_path, monkeypatch):
    sd = _arrays(resnet18_file[1])
    tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
    # A DataParallel prefix, and a state_dict under 'state_dict' or 'model'.
    for name, payload in (('dp', {f'module.{k}': v for k, v in tensors.items()}),
                          ('wrapped', {'state_dict': tensors, 'epoch': 3}),
                          ('model', {'model': tensors})):
        torch.save(payload, tmp_path / f'{name}.pth')
        loaded = convert.load_state_dict(str(tmp_path / f'{name}.pth'))
        assert sorted(loaded) == sorted(sd) and all(
            np.array_equal(loaded[k], sd[k]) for k in sd), name
    # A pickle that needs code to load is refused (weights_only), in one line.
    torch.save({'fc.weight': torch.zeros(2, 2), 'x': np.random.default_rng(0)},
               tmp_path / 'code.pth')
    with pytest.raises(CamjaxError, match='cannot be read as a weights-only') as e:
        convert.load_state_dict(str(tmp_path / 'code.pth'))
    assert '\n' not in str(e.value)
    # An --out that holds anything is refused before the file is even read.
    taken = tmp_path / 'taken'
    taken.mkdir()
    (taken / 'config.json').write_text('{}')
    with pytest.raises(CamjaxError, match='already exists and is not empty'):
        convert.convert_file(resnet18_file[0], 'resnet18_imagenet', str(taken))
    assert os.listdir(taken) == ['config.json'] and (taken / 'config.json').read_text() == '{}'
    # Without torch, one line saying what to install.
    monkeypatch.setitem(sys.modules, 'torch', None)
    with pytest.raises(CamjaxError, match='needs torch: pip install torch'):
        convert.load_state_dict(resnet18_file[0])


def test_converted_run_is_refined_with_linr(resnet18_file, tmp_path):
    """End to end: the CLI converts a ResNet-18, its run's config.json is
    ImageNet-style input for that model, and a LinR refine smoke run with
    train.init_from=DIR starts from exactly these weights."""
    path, net = resnet18_file
    default = convert.run_config('resnet18_imagenet')
    assert (default.dataset.image_size, tuple(default.dataset.mean), tuple(default.dataset.std)
            ) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert default.dataset.name == 'tfds:imagenet2012'

    converted = str(tmp_path / 'converted')
    config = 'configs/imagenet_linrc.py:smoke'  # synthetic 32px data, 1 cls + 1 LinR step
    result = _run_convert(f'--torch={path}', '--arch=resnet18_imagenet', f'--out={converted}',
                          f'--config={config}')
    assert result.returncode == 0, result.stderr[-3000:]
    saved = RunDir(converted).trained_config()
    assert saved.model.to_dict() == {'name': 'resnet18_imagenet', 'dtype': 'float32'}
    assert tuple(saved.dataset.mean) == (0.485, 0.456, 0.406)
    restored = restore_model_variables(converted)
    np.testing.assert_array_equal(restored['params']['Conv_0']['kernel'],
                                  net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))

    # Training in the converted directory itself is refused in one line
    # before anything is written; its save is not taken for a damaged one.
    before = file_hashes(converted)
    result = run_cli(f'--config={config}', '--config.mode=train', f'--workdir={converted}')
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.fullmatch(r'camjax: error: \S+ holds imported weights .* '
                        r'--config.train.init_from=\S+ and another --workdir\n', result.stderr)
    assert file_hashes(converted) == before
    assert sorted(os.listdir(converted)) == ['checkpoints', 'config.json']

    refined = str(tmp_path / 'refined')
    result = run_cli(f'--config={config}', f'--config.train.init_from={converted}',
                     f'--workdir={refined}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'initialized from {converted}' in result.stdout
    records = [r for r in RunDir(refined).records() if r['kind'] in ('train', 'eval')]
    assert [(r['kind'], r.get('round'), r.get('phase')) for r in records] == [
        ('eval', 0, None), ('train', 1, 'cls'), ('train', 1, 'linr'), ('eval', 1, None)]
    # Two small SGD steps from the converted weights: close to them, not equal.
    after = np.asarray(restore_model_variables(refined)['params']['Conv_0']['kernel'])
    before = np.asarray(restored['params']['Conv_0']['kernel'])
    assert 0 < np.abs(after - before).max() < 1e-2


@pytest.mark.parametrize('depth', [101, 152])
def test_deeper_resnets_use_every_key(depth):
    """Mapping only (no forward pass): every torch tensor of ResNet-101/152
    fills exactly one camjax variable of the right shape."""
    with torch.device('meta'):  # shapes without allocating or initializing weights
        keys = resnet(depth, 3).state_dict()
    state_dict = {k: np.zeros(v.shape, np.float32) for k, v in keys.items()
                  if not k.endswith('num_batches_tracked')}
    variables, num_classes = convert.convert(state_dict, f'resnet{depth}_imagenet')
    assert num_classes == 3
    assert sum(len(jax.tree.leaves(variables[n])) for n in variables) == len(state_dict)
