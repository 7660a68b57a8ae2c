"""Multi-host launch detection: jax.distributed.initialize() runs only when
the environment says this is one process of many."""

import pytest

from camjax import parallel

LAUNCH_VARS = ('JAX_COORDINATOR_ADDRESS', 'CAMJAX_COORDINATOR', 'SLURM_NTASKS', 'SLURM_JOB_ID',
               'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES')


@pytest.mark.parametrize('env,multihost', [
    ({}, False),
    ({'SLURM_NTASKS': '1', 'SLURM_JOB_ID': '7'}, False),
    ({'SLURM_NTASKS': '4', 'SLURM_JOB_ID': '7'}, True),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}, True),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
])
def test_multihost_detection(env, multihost, monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    calls = []
    monkeypatch.setattr(parallel.jax.distributed, 'initialize', lambda: calls.append(1))
    assert parallel.maybe_initialize_distributed() is multihost
    assert calls == ([1] if multihost else [])


def test_the_camjax_launch_names_coordinator_count_and_id(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('CAMJAX_COORDINATOR', 'host0:1234')
    monkeypatch.setenv('CAMJAX_NUM_PROCESSES', '4')
    monkeypatch.setenv('CAMJAX_PROCESS_ID', '3')
    calls = []
    monkeypatch.setattr(parallel.jax.distributed, 'initialize',
                        lambda **kwargs: calls.append(kwargs))
    assert parallel.maybe_initialize_distributed()
    assert calls == [{'coordinator_address': 'host0:1234', 'num_processes': 4, 'process_id': 3}]
    from camjax.errors import ConfigError
    monkeypatch.setenv('CAMJAX_PROCESS_ID', '4')
    with pytest.raises(ConfigError, match=r'CAMJAX_PROCESS_ID=4 must be in \[0, '):
        parallel.maybe_initialize_distributed()
    monkeypatch.delenv('CAMJAX_NUM_PROCESSES')
    with pytest.raises(ConfigError, match='CAMJAX_NUM_PROCESSES must be an integer'):
        parallel.maybe_initialize_distributed()
