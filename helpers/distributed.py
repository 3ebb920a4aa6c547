"""Data parallelism over every device of every process, with JAX's own multi-controller runtime.

Once the processes have joined (`jax.distributed.initialize`, in scripts/train.py), the mesh spans every
process's devices along one `data` axis. Each step's batch is gathered by a jitted function whose output is
split along that axis (`helpers.training.BatchFeed`), so XLA gives each device its own rows and the batch
order is the same however many processes train. Parameters are replicated; XLA averages the gradients
across devices (gloo between CPU processes, NCCL between GPUs). `every_process_or_none` makes all
processes stop together, each with one clear line, when one of them cannot go on."""

import contextlib

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESSAGE_BYTES = 512  # of an error's first line, sent to the other processes


class ProcessError(RuntimeError):
    """Another process could not go on: its number and the first line of what it said."""


def is_main_process() -> bool:
    """Process 0 writes the run folder's files and prints; the others train silently."""
    return jax.process_index() == 0


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh ("data") over `devices` (default: every device of every process), ordered by process."""
    return Mesh(np.array(sorted(devices or jax.devices(), key=lambda d: (d.process_index, d.id))), ("data",))


def replicate(tree, mesh: Mesh):
    """Every leaf copied to every device of `mesh`; with several processes each gives the same values."""
    everywhere = NamedSharding(mesh, P())

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # a typed key travels as its raw data
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(everywhere, x, x.shape)

    return jax.tree.map(put, tree)


def local_copy(module: nnx.Module) -> nnx.Module:
    """`module` with its replicated arrays as this process's own (a copy when several processes share
    them): what process 0 samples from after training."""
    if jax.process_count() == 1:
        return module
    return nnx.merge(nnx.graphdef(module), jax.tree.map(lambda x: x.addressable_data(0), nnx.state(module)))


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (with several, a collective: every process must ask)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


def _agree(error: BaseException | None) -> None:
    """Tell every process whether this one can go on; raise `error` here, or ProcessError where another failed."""
    line = "" if error is None else (str(error).splitlines() or [type(error).__name__])[0]
    text = line.encode()[:MESSAGE_BYTES].ljust(MESSAGE_BYTES, b"\0")  # zero-padded
    mine = np.frombuffer(bytes([error is not None]) + text, np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    if error is not None:
        raise error
    for i, row in enumerate(everyone):
        if row[0]:
            said = bytes(row[1:]).rstrip(b"\0").decode(errors="replace")
            raise ProcessError(f"process {i} of {len(everyone)} could not go on: {said}")


@contextlib.contextmanager
def every_process_or_none():
    """A block that every process runs; if it fails on one, every process raises when it leaves the block:
    the one that failed its own error, the others a ProcessError naming it (one process: as usual)."""
    if jax.process_count() == 1:
        yield
        return
    try:
        yield
    except Exception as err:  # noqa: BLE001  (any failure: the others must hear of it, not wait for it)
        _agree(err)
    else:
        _agree(None)
