"""Parallelism policy, kept apart from the models: a device mesh from the config, FSDP shardings
chosen by regex rules on parameter paths, batch shardings, and the multi-host start.

    mesh = make_mesh(cfg.mesh)                    # e.g. (data=2, fsdp=4) on 8 devices
    shardings = tree_shardings(abstract_state, mesh, cfg.mesh)
    batch = global_batch(local_numpy_batch, batch_sharding(mesh, cfg.mesh))

A leaf's path is its keys joined by "/" (e.g. "params/denoiser/layers_0/self_attn/qkv/kernel",
"opt_state/0/mu/denoiser/..."). The first rule in `fsdp_rules` that matches (re.search) decides:
a rule starting with "!" keeps the leaf replicated, any other shards it over the FSDP axis along
its largest dimension divisible by that axis' size. Leaves smaller than `fsdp_min_size` elements,
and leaves no rule matches, are replicated. Optimiser and EMA leaves carry their parameter's path
in theirs, so one rule table covers the whole train state.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sa_jax.errors import ConfigError

log = logging.getLogger("sa_jax.parallel")

# Env vars whose presence means "this is one process of a multi-host job".
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> bool:
    """Call `jax.distributed.initialize()` when the environment describes a multi-process job:
    JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (read by JAX itself), or a SLURM /
    TPU pod environment JAX detects. Must run before anything touches a device. Returns True if
    it initialised."""
    if os.environ.get("SLURM_NTASKS") == "1":
        return False
    if not any(os.environ.get(k) for k in _MULTIHOST_ENV):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def mesh_shape(shape: tuple[int, ...], devices: int) -> tuple[int, ...]:
    """Resolve a -1 to the rest of the devices and check the product."""
    shape = tuple(int(s) for s in shape)
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if devices % known:
            raise ConfigError(f"mesh: {devices} devices cannot be split as {list(shape)}")
        shape = tuple(devices // known if s == -1 else s for s in shape)
    if int(np.prod(shape)) != devices:
        raise ConfigError(f"mesh: shape {list(shape)} needs {int(np.prod(shape))} devices, there are {devices}")
    return shape


def make_mesh(config, devices=None) -> Mesh:
    """The mesh of a `MeshConfig` over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(config.shape, len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
    return jax.make_mesh(shape, tuple(config.axes), axis_types=axis_types, devices=devices)


def path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_spec(path: str, shape: tuple[int, ...], mesh: Mesh, config) -> P:
    """The PartitionSpec of one leaf under the FSDP rules (see the module docstring)."""
    axis = config.fsdp_axis
    if axis is None or mesh.shape[axis] == 1 or int(np.prod(shape, dtype=np.int64)) < config.fsdp_min_size:
        return P()
    for rule in config.fsdp_rules:
        replicate = rule.startswith("!")
        if re.search(rule[1:] if replicate else rule, path):
            if replicate:
                return P()
            n = mesh.shape[axis]
            dims = [d for d in np.argsort(shape)[::-1] if shape[d] % n == 0]
            if not dims:
                return P()
            spec = [None] * len(shape)
            spec[int(dims[0])] = axis
            return P(*spec)
    return P()


def tree_shardings(tree: Any, mesh: Mesh, config) -> Any:
    """NamedShardings for every leaf of `tree` (arrays or jax.ShapeDtypeStruct) by the FSDP rules."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(mesh, leaf_spec(path_str(p), tuple(x.shape), mesh, config)), tree)


def batch_sharding(mesh: Mesh, config) -> NamedSharding:
    """Leading (batch) dimension split over the batch axes, the rest replicated."""
    return NamedSharding(mesh, P(tuple(config.batch_axes)))


def batch_divisor(mesh: Mesh, config) -> int:
    return int(np.prod([mesh.shape[a] for a in config.batch_axes]))


def global_batch(local: dict, sharding: NamedSharding) -> dict:
    """This process' share of the batch (numpy, leading axis = local batch) -> global jax Arrays.
    With one process this is a plain device_put split over the mesh."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def describe(tree: Any) -> str:
    """A short summary of how a state tree is sharded (bytes per device vs replicated)."""
    total = per_device = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        nbytes = leaf.size * leaf.dtype.itemsize
        total += nbytes
        shard = leaf.sharding.shard_shape(leaf.shape)
        per_device += int(np.prod(shard, dtype=np.int64)) * leaf.dtype.itemsize
    return f"{total / 2**20:.1f} MiB in all, {per_device / 2**20:.1f} MiB per device"
