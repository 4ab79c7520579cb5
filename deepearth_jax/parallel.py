"""Devices, meshes and shardings: data parallelism over every device of every host.

The mesh has one axis, "data": the batch is split over it and parameters are replicated (or, with
`mesh.shard_params`, large kernels are split over it too). Many hosts use JAX's own runtime:
`jax.distributed.initialize()` auto-detects SLURM, Open MPI, TPU pods and Kubernetes, or takes explicit
coordinator flags. Knows no model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepearth_jax.errors import ConfigError

log = logging.getLogger(__name__)

DATA_AXIS = "data"

# Environment variables that mean "launched by a cluster scheduler": auto-detection applies.
_CLUSTER_ENV = (
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "JOBSET_NAME",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def initialize_distributed(
    coordinator_address: str = "",
    num_processes: int = -1,
    process_id: int = -1,
    mode: str = "auto",
) -> bool:
    """Starts `jax.distributed` when running on several hosts; returns whether it was started.

    mode: "auto" starts it when explicit coordinator flags are given or a cluster scheduler is detected,
    "off" never, "on" always (auto-detecting what is not given). Safe to call twice.
    """
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"distributed mode must be auto, on or off, got {mode!r}")
    if mode == "off":
        return False
    explicit = bool(coordinator_address)
    detected = any(name in os.environ for name in _CLUSTER_ENV)
    if mode == "auto" and not (explicit or detected):
        return False
    if jax.distributed.is_initialized():
        return True
    # CPU processes (tests, CPU clusters) need a cross-process collectives backend; GPUs and TPUs ignore it.
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # an older or newer jax without the option
        log.debug("jax_cpu_collectives_implementation is not available")
    kwargs = {}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes > 0:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True


def make_mesh(data: int = -1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `data` devices (-1: all devices of all processes), axis name "data"."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices) if data in (-1, 0, None) else int(data)
    if n < 1 or n > len(devices):
        raise ConfigError(f"mesh.data={data} but {len(devices)} device(s) are available")
    # The same axis types (jax.make_mesh's default) whether the mesh spans all devices or a subset.
    return jax.make_mesh((n,), (DATA_AXIS,), devices=devices[:n])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data", the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """For `(K, B, ...)` stacks of K batches (K steps per call): the batch axis split over "data"."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def param_sharding_rule(mesh: Mesh, shard_params: bool, min_size: int = 1 << 16) -> Callable:
    """Returns `rule(shape) -> NamedSharding` for one parameter (or optimizer moment).

    Replicated by default; with `shard_params`, arrays of at least `min_size` elements are split over the
    data axis along their largest dimension divisible by the axis size (FSDP-style, for large heads).
    """
    size = mesh.shape[DATA_AXIS]

    def rule(shape: Sequence[int]) -> NamedSharding:
        if not shard_params or size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
            return replicated(mesh)
        candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % size == 0]
        if not candidates:
            return replicated(mesh)
        spec = [None] * len(shape)
        spec[int(candidates[0])] = DATA_AXIS
        return NamedSharding(mesh, PartitionSpec(*spec))

    return rule


def check_global_batch(global_batch_size: int, mesh: Mesh) -> int:
    """Validates the global batch against the mesh and processes; returns the per-process batch size."""
    devices = mesh.shape[DATA_AXIS]
    if global_batch_size % devices:
        raise ConfigError(
            f"batch_size {global_batch_size} is not divisible by the {devices} devices of the mesh"
        )
    if global_batch_size % jax.process_count():
        raise ConfigError(
            f"batch_size {global_batch_size} is not divisible by {jax.process_count()} processes"
        )
    return global_batch_size // jax.process_count()


def describe(mesh: Mesh) -> str:
    """One line: devices, platform, processes and the mesh shape."""
    devices = mesh.devices.flatten()
    kinds = sorted({d.device_kind for d in devices})
    return (
        f"devices: {len(devices)} ({', '.join(kinds)}; {jax.default_backend()}), "
        f"processes: {jax.process_count()}, mesh: {dict(mesh.shape)}"
    )


def to_host(tree):
    """Device arrays to numpy; in multi-process runs, gathers every process's shards."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
