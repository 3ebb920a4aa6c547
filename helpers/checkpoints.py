"""Checkpoints with orbax-checkpoint: model, optimizer state, EMA, step, PRNG keys and the history.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run killed
mid-save (even with SIGKILL) leaves the previous checkpoints intact. `restore_latest` walks back
from the newest checkpoint and skips any that cannot be read, saying so.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

for _name in ("absl", "orbax", "orbax.checkpoint"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class CheckpointError(RuntimeError):
    """No readable checkpoint: the message says where we looked and what was wrong."""


def _manager(directory: Path, keep: int, create: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _pure(trainer) -> dict:
    """The trainer's state as plain arrays: typed PRNG keys become their raw key data."""
    state = nnx.state(trainer.modules())
    pure = nnx.to_pure_dict(state)
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, pure)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class CheckpointManager:
    """Save every N steps and at the end, keep the last few, restore the newest readable one."""

    def __init__(self, directory, keep: int = 3):
        self.directory = Path(directory)
        self.keep = keep
        self._mngr = _manager(self.directory, keep)

    def steps(self) -> list[int]:
        """The steps of the checkpoints on disk, oldest first."""
        self._mngr.reload()
        return sorted(self._mngr.all_steps())

    def save(self, trainer, extra: dict | None = None) -> int:
        """Write a checkpoint of `trainer` at its current step (synchronously); returns the step."""
        step = trainer.step
        meta = {
            "step": step,
            "config": trainer.cfg.to_dict(),
            "history": trainer.history,
            "data_key": np.asarray(jax.random.key_data(trainer.data_key)).tolist(),
            "step_key": np.asarray(jax.random.key_data(trainer.step_key)).tolist(),
            **(extra or {}),
        }
        self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_pure(trainer)),
                                                      meta=ocp.args.JsonSave(meta)), force=True)
        self._mngr.wait_until_finished()
        return step

    def restore_latest(self, trainer) -> int | None:
        """Load the newest readable checkpoint into `trainer` (in place); returns its step or None."""
        steps = self.steps()
        errors = []
        for step in reversed(steps):
            try:
                self._restore(trainer, step)
                if errors:
                    warnings.warn(f"Skipped unreadable checkpoint(s): {'; '.join(errors)}. "
                                  f"Resumed from step {step}.", stacklevel=2)
                return step
            except Exception as err:  # a corrupt or incomplete checkpoint: try the one before
                errors.append(f"step {step} ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
        if errors:
            raise CheckpointError(f"No readable checkpoint in {self.directory}: {'; '.join(errors)}. "
                                  f"Start a new run with another --out, or delete the folder.")
        return None

    def restore(self, trainer, step: int) -> int:
        """Load the checkpoint of `step` into `trainer` (in place); CheckpointError if it is not kept."""
        if step not in self.steps():
            raise CheckpointError(f"{self.directory} has no checkpoint of step {step}; it keeps steps {self.steps()}.")
        self._restore(trainer, step)
        return step

    def _restore(self, trainer, step: int) -> None:
        target = _pure(trainer)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        pure, meta = restored["state"], restored["meta"]
        if int(meta["step"]) != step:
            raise CheckpointError(f"checkpoint {step} says it is step {meta['step']}")
        # Typed PRNG keys: rebuild them from their raw data, as they were saved.
        live = nnx.to_pure_dict(nnx.state(trainer.modules()))
        pure = jax.tree.map(lambda new, old: jax.random.wrap_key_data(new) if _is_key(old) else new,
                            pure, live)
        bad = [p for p, x in jax.tree_util.tree_leaves_with_path(pure)
               if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) and not bool(jax.numpy.all(jax.numpy.isfinite(x)))]
        if bad:
            raise CheckpointError(f"checkpoint {step} holds non-finite values")
        state = nnx.state(trainer.modules())
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(trainer.modules(), state)
        trainer.data_key = jax.random.wrap_key_data(np.asarray(meta["data_key"], np.uint32))
        trainer.step_key = jax.random.wrap_key_data(np.asarray(meta["step_key"], np.uint32))
        trainer._order_epoch = None  # the cached epoch order belongs to the old key
        trainer.history = {k: list(v) for k, v in meta["history"].items()}
        trainer.place_on_mesh()


def read_config(run_dir) -> dict:
    """The resolved config a run wrote (`config.json`)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder: {path.name} is missing. "
                              f"Pass the folder that scripts/train.py wrote (its --out).")
    return json.loads(path.read_text())


def load_run(run_dir, step: int | None = None):
    """Rebuild a run's Trainer from its folder and load its newest readable checkpoint.

    Returns (config, trainer); `trainer.ema.model` is the EMA model to sample from. `step` loads
    that checkpoint instead of the newest (one of those still kept: `CheckpointManager.steps()`).
    """
    from helpers.config import Config
    from helpers.training import Trainer
    from helpers.unet import create_unet

    cfg = Config.from_dict(read_config(run_dir))
    placeholder = np.zeros((cfg.batch_size, 28, 28, 1), np.uint8)  # shapes only; no data needed
    trainer = Trainer(cfg, create_unet(cfg.model, seed=cfg.seed), placeholder, total_steps=1)
    mngr = CheckpointManager(Path(run_dir) / "checkpoints", keep=cfg.keep_checkpoints)
    if step is not None:
        mngr.restore(trainer, step)
        return cfg, trainer
    if mngr.restore_latest(trainer) is None:
        raise CheckpointError(f"{run_dir} has no checkpoint yet (looked in {mngr.directory}).")
    return cfg, trainer
