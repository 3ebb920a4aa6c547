"""Checkpoints with orbax-checkpoint: model, optimiser state, EMA, guide, step, PRNG keys, history.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run killed
mid-save keeps its previous ones; `restore_latest` skips any that cannot be read, saying so."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from helpers.config import Config
from helpers.training import Trainer
from helpers.unet import create_unet

logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs every save at INFO


class CheckpointError(RuntimeError):
    """No readable checkpoint or run folder: the message says where we looked and what was wrong."""


def _is_key(x) -> bool:  # a typed PRNG key (orbax stores its raw uint32 data instead)
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _raw_key(x):
    """A typed PRNG key as its raw uint32 data (shapes only for an abstract key); anything else as it is."""
    if not _is_key(x):
        return x
    return jax.eval_shape(jax.random.key_data, x) if isinstance(x, jax.ShapeDtypeStruct) else jax.random.key_data(x)


def _pure_state(trainer) -> dict:
    """The trainer's state as nested dicts of arrays, PRNG keys as raw key data (what orbax stores)."""
    return jax.tree.map(_raw_key, nnx.to_pure_dict(nnx.state(trainer.modules())))


class CheckpointManager:
    """Save every N steps and at the end, keep the last few (and those at multiples of `keep_every`:
    notebook 04 samples from them), restore the newest readable one."""

    def __init__(self, directory, keep: int = 3, keep_every: int | None = None):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_every, create=True,
                                               enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """The steps of the checkpoints on disk, oldest first."""
        self.wait()
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def wait(self) -> None:
        """Block until a save that is still being written in the background is complete."""
        self._manager.wait_until_finished()

    def save(self, trainer) -> int:
        """Start writing a checkpoint of `trainer` at its current step; returns the step. The arrays are
        copied first, so training goes on while the files are written (`wait` for them)."""
        meta = {"step": trainer.step, "config": json.loads(trainer.cfg.to_json()), "history": trainer.history,
                "data_key": np.asarray(jax.random.key_data(trainer.data_key)).tolist(),
                "step_key": np.asarray(jax.random.key_data(trainer.step_key)).tolist()}
        self._manager.save(trainer.step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_pure_state(trainer)), meta=ocp.args.JsonSave(meta)), force=True)
        return trainer.step

    def restore_latest(self, trainer) -> int | None:
        """Load the newest readable checkpoint into `trainer` (in place); returns its step or None."""
        errors = []
        for step in reversed(self.steps()):
            try:
                self.restore(trainer, step)
            except Exception as err:  # a corrupt or incomplete checkpoint: try the one before
                errors.append(f"step {step} ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
                continue
            if errors:
                warnings.warn(f"Skipped unreadable checkpoint(s): {'; '.join(errors)}. Resumed from step {step}.",
                              stacklevel=2)
            return step
        if errors:
            raise CheckpointError(f"No readable checkpoint in {self.directory}: {'; '.join(errors)}. "
                                  f"Start a new run with another --out, or delete the folder.")
        return None

    def restore(self, trainer, step: int) -> int:
        """Load the checkpoint of `step` into `trainer` (in place); CheckpointError if it is not kept."""
        if step not in self.steps():
            raise CheckpointError(f"{self.directory} has no checkpoint of step {step}; it keeps steps {self.steps()}.")
        live = _pure_state(trainer)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, live)),
            meta=ocp.args.JsonRestore()))
        pure, meta = restored["state"], restored["meta"]
        if int(meta["step"]) != step:
            raise CheckpointError(f"checkpoint {step} says it is step {meta['step']}")
        if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(pure) if jnp.issubdtype(x.dtype, jnp.floating)):
            raise CheckpointError(f"checkpoint {step} holds non-finite values")
        state = nnx.state(trainer.modules())
        keys_back = lambda new, old: jax.random.wrap_key_data(new) if _is_key(old) else new  # noqa: E731
        nnx.replace_by_pure_dict(state, jax.tree.map(keys_back, pure, nnx.to_pure_dict(state)))
        nnx.update(trainer.modules(), state)
        trainer.data_key = jax.random.wrap_key_data(np.asarray(meta["data_key"], np.uint32))
        trainer.step_key = jax.random.wrap_key_data(np.asarray(meta["step_key"], np.uint32))
        trainer.history = {k: list(v) for k, v in meta["history"].items()}
        trainer.place_on_mesh()
        return step


def read_config(run_dir):
    """The `Config` a run wrote to its `config.json`; CheckpointError naming the file if it cannot be read."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder: {path} is missing. Pass the folder that "
                              f"scripts/train.py wrote (its --out).")
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} cannot be read as a run configuration: {err}. Restore the file "
                              f"(each checkpoint's meta also holds the config) or start a new run.") from err


def load_run(run_dir, step: int | None = None):
    """(config, trainer) of a run folder, with its newest readable checkpoint (or `step`) loaded.

    The model is built abstractly with `nnx.eval_shape` (shapes only, no data, no initialisation);
    the checkpoint then fills it. `trainer.ema.model` is the EMA model to sample from."""
    cfg = read_config(run_dir)
    trainer = Trainer(cfg, nnx.eval_shape(lambda: create_unet(cfg.model, seed=cfg.seed)), total_steps=1)
    manager = CheckpointManager(Path(run_dir) / "checkpoints")
    if step is not None:
        manager.restore(trainer, step)
    elif manager.restore_latest(trainer) is None:
        raise CheckpointError(f"{run_dir} has no checkpoint yet (looked in {manager.directory}).")
    return cfg, trainer
