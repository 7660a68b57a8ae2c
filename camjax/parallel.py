"""Devices, the ('data',) mesh and multi-host start-up.

Parameters are replicated and batches sharded on the batch axis, under plain
`jax.jit` (the recommended replacement for pmap)."""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'

# Environment variables that only a multi-process launch sets.
_MULTIHOST_ENV = ('JAX_COORDINATOR_ADDRESS', 'CAMJAX_COORDINATOR')


def _is_multihost_launch() -> bool:
    if any(os.environ.get(v) for v in _MULTIHOST_ENV):
        return True
    if int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_JOB_ID' in os.environ:
        return True
    if int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
        return True
    # Cloud TPU pod slices list every worker host.
    return len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1


def maybe_initialize_distributed() -> bool:
    """Call jax.distributed.initialize() when launched as one of many processes
    (SLURM, Open MPI, TPU pod, or an explicit coordinator address). Must run
    before anything touches a device."""
    if not _is_multihost_launch():
        return False
    jax.distributed.initialize(**camjax_launch_args())
    return True


def camjax_launch_args() -> dict:
    """jax.distributed.initialize's arguments from CAMJAX_COORDINATOR
    (host:port of process 0), CAMJAX_NUM_PROCESSES and CAMJAX_PROCESS_ID;
    {} without CAMJAX_COORDINATOR (JAX detects SLURM, Open MPI, Cloud TPU
    and JAX_COORDINATOR_ADDRESS itself)."""
    from camjax.errors import ConfigError
    address = os.environ.get('CAMJAX_COORDINATOR')
    if not address:
        return {}
    values = {}
    for name, arg in (('CAMJAX_NUM_PROCESSES', 'num_processes'),
                      ('CAMJAX_PROCESS_ID', 'process_id')):
        try:
            values[arg] = int(os.environ[name])
        except (KeyError, ValueError):
            raise ConfigError(f'CAMJAX_COORDINATOR={address} is set, so {name} must be an '
                              f'integer; got {os.environ.get(name)!r}') from None
    if not 0 <= values['process_id'] < values['num_processes']:
        raise ConfigError(f"CAMJAX_PROCESS_ID={values['process_id']} must be in "
                          f"[0, CAMJAX_NUM_PROCESSES={values['num_processes']})")
    return {'coordinator_address': address, **values}


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
