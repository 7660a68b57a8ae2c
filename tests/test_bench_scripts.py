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
