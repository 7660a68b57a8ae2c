"""The benchmark scripts run on CPU at their smallest settings: bench/device_scaling.py
for 1 and 2 forced devices (the two agree within its tolerance, and its
figures parse), and bench/gpu.sh --smoke end to end (every section prints
figures, tagged with the device kind). The speeds themselves are not
checked: they are measurements, not behaviour."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

NUM = r'(\d+(?:\.\d+)?(?:e[-+]\d+)?)'


def _run(args, timeout=300, env=None):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_device_scaling_one_and_two_devices_agree_and_report_throughput():
    r = _run([sys.executable, 'bench/device_scaling.py', '--devices', '1,2', '--model',
              'resnet8', '--width', '4', '--size', '16', '--batch', '16', '--check-steps', '2',
              '--rounds', '2', '--steps', '1', '--warmup', '1', '--rotate', '2'])
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    out = r.stdout
    assert 'tolerance 1e-05' in out
    assert re.search(r"N=2: cpu \(cpu x2\), batch sharding P\('data',\) over 2 shard", out)
    floor = re.search(rf'N=1, batches reversed .*max\|param diff\| {NUM} .*'
                      rf'max\|param update\| {NUM}', out)
    assert floor and float(floor[1]) < 1e-5 < float(floor[2])
    agree = re.search(rf'N=2: losses ([\d. ]+); max\|loss diff\| {NUM}; max\|param diff\| '
                      rf'{NUM} \(initial {NUM}; BatchNorm stats {NUM}\) OK', out)
    assert agree, out
    assert len(agree[1].split()) == 2 and all(np.isfinite(float(x)) for x in agree[1].split())
    assert float(agree[2]) <= 1e-5 and float(agree[3]) <= 1e-5 and float(agree[4]) == 0.0
    rows = re.findall(rf'^\s+([12])\s+{NUM}\s+{NUM}-{NUM}\s+{NUM}x$', out, re.M)
    assert [row[0] for row in rows] == ['1', '2'], out
    for _, median, lo, hi, ratio in rows:
        assert 0 < float(lo) <= float(median) <= float(hi) and float(ratio) > 0
    assert float(rows[0][4]) == 1.0


def test_device_scaling_agreement_fails_beyond_tolerance(tmp_path):
    """The check itself, on saved parameters: identical passes, a difference
    above --tol fails (and then the script exits 1)."""
    import argparse

    import device_scaling  # bench/ is on sys.path (conftest)
    base = {'init/w': np.zeros(3, np.float32), 'params/w': np.ones(3, np.float32),
            'batch_stats/m': np.zeros(2, np.float32), 'control/w': np.ones(3, np.float32)}
    np.savez(tmp_path / '1.npz', **base)
    ready = {1: {'losses': [1.0], 'control': [1.0]}, 2: {'losses': [1.0]}}
    args = argparse.Namespace(check_steps=1, tol=1e-5)
    outs = {1: tmp_path / '1.npz', 2: tmp_path / '2.npz'}
    np.savez(outs[2], **base)
    assert device_scaling.report_agreement([1, 2], ready, outs, args)
    np.savez(outs[2], **{**base, 'params/w': np.float32([1, 1, 1 + 3e-5])})
    assert not device_scaling.report_agreement([1, 2], ready, outs, args)


def test_gpu_sh_smoke_prints_every_figure_with_the_device():
    r = _run(['bash', 'bench/gpu.sh', '--smoke'], env={'PYTHON': sys.executable})
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    out = r.stdout
    kind = re.search(r'gpu\.sh: device \[(.+?)\]', out)[1]
    tag = re.escape(f'[{kind}]')
    synthetic = re.search(rf'^{tag} synthetic batches, train step: {NUM} img/s .*goal >= 5000 '
                          rf'img/s: (MET|NOT MET) \({NUM}x of goal\)', out, re.M)
    assert synthetic and float(synthetic[1]) > 0, out
    assert abs(float(synthetic[1]) / 5000 - float(synthetic[3])) < 0.01
    alone = re.search(rf'^{tag} input pipeline alone .*: {NUM} img/s', out, re.M)
    both = re.search(rf'^{tag} input pipeline \+ train step: {NUM} img/s .*; {NUM}x of '
                     'synthetic', out, re.M)
    assert alone and both and float(alone[1]) > 0 and float(both[1]) > 0, out
    for variant in ('hnc_kd', 'hnc_mse', 'l1', 'linr', 'linrc', 'linrnm'):  # ratio vs CE
        row = re.search(rf'^{tag}\s+{variant}\s+{NUM}\s+{NUM}.*\|\s+{NUM}\s+{NUM}', out, re.M)
        assert row and float(row[3]) > 0, (variant, out)
    figures = [line for line in out.splitlines() if 'img/s' in line or 'GFLOP' in line]
    assert len(figures) >= 11 and all(line.startswith(f'[{kind}]') for line in figures)


def test_gpu_sh_refuses_a_full_run_without_a_gpu_and_bad_arguments():
    import jax
    if jax.default_backend() != 'cpu':
        pytest.skip('a GPU or TPU is visible: a full run would start')
    r = _run(['bash', 'bench/gpu.sh', '--only', 'synthetic'], env={'PYTHON': sys.executable})
    assert r.returncode == 2 and 'no GPU' in r.stderr
    r = _run(['bash', 'bench/gpu.sh', '--only', 'nonsense'], env={'PYTHON': sys.executable})
    assert r.returncode == 2 and 'unknown section nonsense' in r.stderr


# -- bench/step_throughput.py and bench/train_throughput.py: camjax's CLI step
# and whole loop against PyTorch. These check that the two sides do the same
# work and that the figures come out; the speeds are not checked.

def _has_torch() -> bool:
    import importlib.util
    return importlib.util.find_spec('torch') is not None


HAS_TORCH = _has_torch()
CIFAR_ARCHIVE = os.path.join(ROOT, '..', 'shared', 'data', 'cifar10-jpeg.tar.gz')
TINY_RESNET = ['--model', 'resnet8', '--width', '4', '--size', '16', '--batch', '8']


def test_torch_mirror_takes_the_same_steps_as_the_cli_step():
    """Same weights and batches: the PyTorch step step_throughput.py times
    (model, uint8 normalization, SGD + Nesterov + weight decay, cosine)
    gives camjax's CLI step's losses and, after two steps, its parameters
    and BatchNorm means (running variances: torch keeps unbiased ones)."""
    torch = pytest.importorskip('torch')
    import cli_step
    import jax
    import step_throughput
    cli = cli_step.build(cli_step.bench_config(model='resnet8', image_size=16, batch_size=8,
                                               width=4), num_classes=10)
    step = step_throughput.torch_cli_step(cli)
    state = cli.initial_state()
    for i in range(2):
        host = cli.host_batch(i)
        state, metrics = cli.step(state, jax.device_put(host, cli.batch_sharding))
        loss, accuracy = step(*step_throughput.torch_batch(host))
        assert abs(float(metrics['loss']) - float(loss)) < 1e-4
        assert float(metrics['accuracy']) == float(accuracy)
    expected = step_throughput.torch_cifar_resnet(8, 10, width=4)
    step_throughput.load_camjax_weights(expected, state.params, state.batch_stats)
    ours, theirs = step.model.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys()
    start = np.asarray(cli.state.params['classifier']['kernel']).T
    assert np.abs(ours['fc.weight'].numpy() - start).max() > 1e-3  # the steps moved it
    for key, value in ours.items():
        if key.endswith('num_batches_tracked'):
            continue
        rtol = 2e-2 if key.endswith('running_var') else 1e-4
        assert torch.allclose(value, theirs[key], rtol=rtol, atol=1e-4), key


def test_step_throughput_quick_mode_reports_each_impl_against_pytorch():
    r = _run([sys.executable, 'bench/step_throughput.py', *TINY_RESNET, '--impls', 'auto',
              '--steps', '1', '--repeats', '2', '--warmup', '0', '--rotate', '2',
              '--torch-threads', '1', *([] if HAS_TORCH else ['--no-torch'])])
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    out = r.stdout
    assert 'persistent compilation cache off' in out
    compiled = re.search(rf'camjax\[auto=(fast|xla)\]: compile \(first call.*\) {NUM} s; '
                         rf'first loss {NUM}', out)
    assert compiled and float(compiled[2]) > 0, out
    import jax
    assert compiled[1] == ('fast' if jax.default_backend() == 'cpu' else 'xla')
    rows = dict((row[0], row[1:]) for row in re.findall(
        rf'^(auto=\w+|pytorch)\s+{NUM}\s+{NUM}-{NUM}\s+(\S+)$', out, re.M))
    auto = rows[f'auto={compiled[1]}']
    assert 0 < float(auto[1]) <= float(auto[0]) <= float(auto[2])
    if not HAS_TORCH:
        assert 'PyTorch reference skipped' in out and auto[3] == '-'
        return
    torch_loss = re.search(rf'PyTorch reference: .*intra-op threads 1 .*first loss {NUM}', out)
    assert torch_loss and abs(float(torch_loss[1]) - float(compiled[3])) < 1e-3, out
    assert rows['pytorch'][3] == '1.00x'
    ratio = float(auto[0]) / float(rows['pytorch'][0])  # from the rounded figures
    assert float(auto[3][:-1]) == pytest.approx(ratio, rel=0.01, abs=0.01)


def test_train_throughput_combines_windows_after_the_warmup():
    import train_throughput
    records = [{'kind': 'train', 'step': 25, 'images_per_s': 10.0},
               {'kind': 'eval', 'step': 50},
               {'kind': 'train', 'step': 50, 'images_per_s': 100.0},
               {'kind': 'train', 'step': 100, 'images_per_s': 200.0}]
    rate, steps = train_throughput.window_rate(records, batch=4, after_step=25)
    assert steps == 75  # windows 26-50 and 51-100; 1-25 excluded
    assert rate == pytest.approx(75 * 4 / (25 * 4 / 100 + 50 * 4 / 200))


def test_train_throughput_unpacks_once_and_skips_without_data(tmp_path, capsys):
    import tarfile

    import train_throughput
    src = tmp_path / 'src'
    for name in ('train/a/0.jpg', 'test/a/0.jpg'):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b'x')
    archive = tmp_path / 'data.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(src / 'train', 'train')
        tar.add(src / 'test', 'test')
    cache = tmp_path / 'cache' / 'cifar10'
    assert train_throughput.unpacked_cifar10(str(archive), str(cache)) == str(cache)
    assert (cache / 'train' / 'a' / '0.jpg').read_bytes() == b'x'
    archive.unlink()  # a second call finds the complete unpacking and reads nothing
    assert train_throughput.unpacked_cifar10(str(archive), str(cache)) == str(cache)
    assert sorted(p.name for p in cache.parent.iterdir()) == ['cifar10']
    assert train_throughput.main(['--archive', str(archive)]) is None
    assert 'skipped: ' in capsys.readouterr().out


@pytest.mark.skipif(not os.path.exists(CIFAR_ARCHIVE),
                    reason='../shared/data/cifar10-jpeg.tar.gz is not present')
def test_train_throughput_quick_mode_runs_both_loops_on_cifar10(tmp_path):
    subprocess.run(['tar', '-xzf', CIFAR_ARCHIVE, '-C', str(tmp_path), '--wildcards',
                    'train/*/000?.jpg', 'test/*/000?.jpg'], check=True)
    r = _run([sys.executable, 'bench/train_throughput.py', '--data', str(tmp_path),
              '--steps', '2', '--warmup-steps', '1', '--log-every', '1', '--batch', '8',
              '--set', "model={'name': 'resnet8', 'width': 4}", '--torch-threads', '1',
              *([] if HAS_TORCH else ['--no-torch'])])
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    out = r.stdout
    assert re.search(r'^  camjax \| step 2/2 \| loss', out, re.M), out
    camjax = re.search(rf'camjax \| {NUM} img/s over steps 2-2 \(1 steps\)', out)
    assert camjax and float(camjax[1]) > 0, out
    if not HAS_TORCH:
        assert 'PyTorch reference skipped' in out
        return
    assert re.search(r'^PyTorch: .*(torchvision ImageFolder|PIL \+ torch dataset).*'
                     r'DataLoader over 100 images, 2 workers, batch 8', out, re.M), out
    torch_rate = re.search(rf'torch  \| {NUM} img/s over steps 2-2 \(1 steps\)', out)
    ratio = re.search(rf'camjax / PyTorch: {NUM}x', out)
    assert torch_rate and ratio, out
    expected = float(camjax[1]) / float(torch_rate[1])  # from the rounded figures
    assert float(ratio[1]) == pytest.approx(expected, rel=0.02, abs=0.01)


@pytest.mark.parametrize('schedule', ['cosine', 'step', 'constant'])
def test_torch_optimizer_follows_camjax_schedules(schedule):
    pytest.importorskip('torch')
    import step_throughput
    import torch

    from camjax.config.schema import optimizer_group
    from camjax.training import optim
    cfg = optimizer_group(schedule=schedule, step_epochs=(2.0, 3.0))
    opt, sched = step_throughput.torch_optimizer(torch.nn.Linear(1, 1), cfg, total_steps=10,
                                                 steps_per_epoch=2)
    camjax = optim.make_schedule(cfg, total_steps=10, steps_per_epoch=2, batch_size=8)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    # camjax's schedule is float32: 2e-6 relative near the cosine's end.
    np.testing.assert_allclose(lrs, [float(camjax(i)) for i in range(10)], rtol=1e-5)
    group = opt.param_groups[0]
    assert (group['momentum'], group['nesterov'], group['weight_decay']) == (0.9, True, 5e-4)
