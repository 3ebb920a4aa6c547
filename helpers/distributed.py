"""Data parallelism over every device of every process, with JAX's own multi-controller runtime.

Once the processes have joined (`jax.distributed.initialize`, in scripts/train.py), the mesh spans every
process's devices along one `data` axis. A process feeds only its own devices' rows of each global batch,
which `to_global` assembles, so the batch order is the same however many processes feed it. Parameters are
replicated; XLA averages the gradients across devices (gloo between CPU processes, NCCL between GPUs)."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def is_main_process() -> bool:
    """Process 0 writes the run folder's files and prints; the others train silently."""
    return jax.process_index() == 0


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh ("data") over `devices` (default: every device of every process), ordered by process,
    so that each process's devices hold one contiguous block of every batch."""
    devices = sorted(devices or jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), ("data",))


def process_rows(batch_size: int, mesh: Mesh) -> tuple[int, int]:
    """The rows [start, stop) of each global batch that this process feeds: its devices' share."""
    devices = list(mesh.devices.flat)
    if batch_size % len(devices):
        raise ValueError(f"batch_size {batch_size} must be divisible by the {len(devices)} devices of the mesh.")
    mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
    per_device = batch_size // len(devices)
    return mine[0] * per_device, (mine[-1] + 1) * per_device


def local_sharding(mesh: Mesh) -> NamedSharding:
    """This process's devices of `mesh`, in the mesh's order, splitting the first axis among them."""
    mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return NamedSharding(Mesh(np.array(mine), ("data",)), P("data"))


def to_global(local_rows, mesh: Mesh):
    """Global arrays (split along "data" over `mesh`) from each process's rows, already placed on its own
    devices by `local_sharding`: no data moves, each device's piece becomes its shard."""
    def join(x):
        shape = (x.shape[0] * mesh.devices.size // len(x.addressable_shards),) + x.shape[1:]
        return jax.make_array_from_single_device_arrays(shape, NamedSharding(mesh, P("data")),
                                                        [s.data for s in x.addressable_shards])

    return jax.tree.map(join, local_rows)


def replicate(tree, mesh: Mesh):
    """Every leaf copied to every device of `mesh` (each process gives the same values)."""
    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # a typed key travels as its raw data
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), NamedSharding(mesh, P()))

    return jax.tree.map(put, tree)


def local_copy(module: nnx.Module) -> nnx.Module:
    """`module` with its replicated arrays as this process's own (a copy when several processes share
    them): what process 0 samples from after training."""
    if jax.process_count() == 1:
        return module
    copy = nnx.clone(module)
    nnx.update(copy, jax.tree.map(lambda x: x.addressable_data(0), nnx.state(module)))
    return copy
