"""Checkpoints with orbax-checkpoint: the state of an `nnx.Module` (a run's `TrainState`) and JSON metadata
(the step, the config, the loss history). Orbax writes each one to a temporary folder and renames it when
complete, so a run killed mid-save keeps its previous ones; `restore_latest` skips unreadable ones, saying
so. With several processes each calls `save` and `restore`; orbax writes each array and the metadata once."""

import json
import logging
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import SingleDeviceSharding

from helpers.config import Config

logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs every save at INFO


class CheckpointError(RuntimeError):
    """No readable checkpoint or run folder: the message says where we looked and what was wrong."""


def _is_key(x) -> bool:  # a typed PRNG key (a dropout layer's stream): orbax stores its raw uint32 data
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _pure(state) -> dict:
    """The state as nested dicts of arrays (or shapes, for an abstract state), typed keys as raw key data."""
    def raw(x):
        if not _is_key(x):
            return x
        return jax.eval_shape(jax.random.key_data, x) if isinstance(x, jax.ShapeDtypeStruct) else jax.random.key_data(x)

    return jax.tree.map(raw, nnx.to_pure_dict(state))


def _abstract(pure: dict):
    """Shapes, dtypes and shardings to restore into: the live arrays' own, or (an abstract state from
    `nnx.eval_shape`) this process's first device."""
    default = SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding or default), pure)


class CheckpointManager:
    """Save every N steps and at the end, keep the last few (and those at multiples of `keep_every`:
    notebook 04 samples from them), restore the newest readable one."""
    def __init__(self, directory, keep: int = 3, keep_every: int | None = None):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_every, create=True, enable_async_checkpointing=True))

    def steps(self) -> list[int]:  # of the checkpoints on disk, oldest first
        self.wait()
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def wait(self) -> None:  # until a save still being written in the background is complete
        self._manager.wait_until_finished()

    def save(self, step: int, module: nnx.Module, meta: dict) -> None:
        """Start writing `module`'s state and `meta` as the checkpoint of `step`. The arrays are copied
        first, so training goes on while the files are written (`wait` for them)."""
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_pure(nnx.state(module))),
                                                         meta=ocp.args.JsonSave({**meta, "step": step})), force=True)

    def restore(self, step: int, module: nnx.Module) -> dict:
        """Load the checkpoint of `step` into `module` (in place; an abstract module from `nnx.eval_shape`
        gets arrays on this process's first device); returns its metadata."""
        if step not in self.steps():
            raise CheckpointError(f"{self.directory} has no checkpoint of step {step}; it keeps steps {self.steps()}.")
        state = nnx.state(module)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(_pure(state))), meta=ocp.args.JsonRestore()))
        pure, meta = restored["state"], restored["meta"]
        if int(meta["step"]) != step:
            raise CheckpointError(f"checkpoint {step} says it is step {meta['step']}")
        if not all(jax.numpy.isfinite(x).all() for x in jax.tree.leaves(pure) if np.issubdtype(x.dtype, np.floating)):
            raise CheckpointError(f"checkpoint {step} holds non-finite values")
        keys_back = lambda new, old: jax.random.wrap_key_data(new) if _is_key(old) else new  # noqa: E731
        nnx.replace_by_pure_dict(state, jax.tree.map(keys_back, pure, nnx.to_pure_dict(state)))
        nnx.update(module, state)
        return meta

    def restore_latest(self, module: nnx.Module) -> dict | None:
        """Load the newest readable checkpoint into `module` (in place); returns its metadata, or None
        when there is no checkpoint at all."""
        errors = []
        for step in reversed(self.steps()):
            try:
                meta = self.restore(step, module)
            except Exception as err:  # a corrupt or incomplete checkpoint: try the one before
                errors.append(f"step {step} ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
                continue
            if errors:
                warnings.warn(f"Skipped unreadable checkpoint(s): {'; '.join(errors)}. Resumed from step {step}.",
                              stacklevel=2)
            return meta
        if errors:
            raise CheckpointError(f"No readable checkpoint in {self.directory}: {'; '.join(errors)}. "
                                  f"Start a new run with another --out, or delete the folder.")
        return None


def read_config(run_dir) -> Config:
    """The `Config` a run wrote to its `config.json`; CheckpointError naming the file if it cannot be read."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder: {path} is missing. Pass the folder that "
                              f"scripts/train.py wrote (its --out).")
    try:
        return Config.from_dict(json.loads(path.read_text())).validate()
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} cannot be read as a run configuration: {err}. Restore the file "
                              f"(each checkpoint's meta also holds the config) or start a new run.") from err
