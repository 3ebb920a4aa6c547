"""Optimiser, learning-rate schedule, EMA, the train step and the training loop.

The train step is written the NNX way (modules mutated in place) and compiled two ways:
`nnx.jit(train_step)` for one step at a time (the notebooks show it), and `Trainer`, which compiles
it once with split/merge around it and dispatches `log_every` steps back to back without waiting
(JAX dispatch is asynchronous), reading the metrics once per chunk. (A `lax.scan` over whole train
steps was measured ~20x slower per step on XLA:CPU, so it is not used.) The batch is sharded over
all local devices (`jax.sharding`).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from helpers.config import Config
from helpers.data import batch_slice, epoch_order, steps_per_epoch, to_model_range
from helpers.losses import (loss_weights, masked_mean, per_example_loss, prediction_target,
                            sample_timesteps)
from helpers.schedules import NoiseSchedule


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


# ----------------------------------------------------------------------------- optimiser


def make_lr_schedule(peak: float, warmup_steps: int, total_steps: int, end_fraction: float = 0.01):
    """Linear warmup from 0 to `peak`, then cosine decay to `end_fraction * peak` at `total_steps`.

    optax counts the warmup inside `decay_steps`, so decay_steps = total_steps (the reference
    tutorial's `decay_steps=total_steps` is right; its comment "over 1000 steps" is not: 500).
    """
    warmup_steps = min(int(warmup_steps), max(int(total_steps) - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(int(total_steps), warmup_steps + 1), end_value=peak * end_fraction)


def make_optimizer(model: nnx.Module, lr_schedule, weight_decay: float, grad_clip: float) -> nnx.Optimizer:
    """Global-norm clipping, then AdamW (Loshchilov & Hutter 2019) on the model's nnx.Param leaves."""
    steps = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    tx = optax.chain(*steps, optax.adamw(lr_schedule, weight_decay=weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


# ----------------------------------------------------------------------------- EMA


def own_copy(model: nnx.Module) -> nnx.Module:
    """A clone of `model` with its own copies of the arrays (not shared, so both can be donated to
    one jit call or changed independently)."""
    copy = nnx.clone(model)
    nnx.update(copy, jax.tree.map(jnp.copy, nnx.state(model)))
    return copy


class EmaCount(nnx.Variable):
    """How many EMA updates have been applied (drives the decay warm-up)."""


def ema_decay_at(decay: float, num_updates, warmup: bool = True):
    """decay_n = min(decay, (1 + n) / (10 + n)) with warm-up, else `decay`.

    Without warm-up an EMA of 0.9999 started from the initial weights still holds 0.9999^n of them
    after n updates (89% after 1,170 updates), and samples from it are noise.
    """
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    n = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


class EMA(nnx.Module):
    """Exponential moving average of a model's parameters: `ema.model` is a full model to sample from."""

    def __init__(self, model: nnx.Module, decay: float = 0.9999, every: int = 1, warmup: bool = True):
        self.model = own_copy(model)  # not sharing arrays with the model: both are donated to the step
        self.decay, self.every, self.warmup = float(decay), int(every), bool(warmup)
        self.count = EmaCount(jnp.zeros((), jnp.int32))

    def update(self, model: nnx.Module, step) -> None:
        """After optimiser step `step` (1-based): ema = d * ema + (1 - d) * params, every `every` steps."""
        do = (jnp.asarray(step) % self.every) == 0
        d = jnp.where(do, ema_decay_at(self.decay, self.count.value, self.warmup), 1.0)
        ema_params = nnx.state(self.model, nnx.Param)
        params = nnx.state(model, nnx.Param)
        nnx.update(self.model, jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params))
        self.count.value = self.count.value + do.astype(jnp.int32)


class GuideStep(nnx.Variable):
    """The step at which the guide's weights were taken (-1: not yet)."""


class Guide(nnx.Module):
    """The weak model of autoguidance (Karras et al. 2024): a frozen copy of the EMA weights taken
    once, early in the run (`Config.guide_fraction`), checkpointed with the rest of the state."""

    def __init__(self, model: nnx.Module):
        self.model = own_copy(model)
        self.taken_at = GuideStep(jnp.array(-1, jnp.int32))

    def take(self, model: nnx.Module, step: int) -> None:
        """Copy `model`'s weights (the EMA model) into the guide, recording the step."""
        nnx.update(self.model, jax.tree.map(jnp.copy, nnx.state(model)))
        self.taken_at[...] = jnp.array(step, jnp.int32)

    @property
    def step(self) -> int:
        """The training step whose EMA weights the guide holds (-1: not taken yet)."""
        return int(self.taken_at[...])

    @property
    def ready(self) -> bool:
        """Whether the weights have been taken (before that the guide holds the initial weights)."""
        return self.step >= 0


def guide_step(fraction: float, total_steps: int, chunk: int) -> int:
    """The step at which the guide is taken: `fraction` of the run, rounded to a whole chunk (the
    trainer reads its state only between chunks), at least one chunk and at most the whole run."""
    return int(min(total_steps, max(chunk, round(fraction * total_steps / chunk) * chunk)))


# ----------------------------------------------------------------------------- the step


def train_step(model, optimizer: nnx.Optimizer, ema: EMA, schedule: NoiseSchedule, cfg: Config,
               images_uint8, labels, idx, mask, key, sharding=None):
    """One DDPM training step (Ho et al. 2020, algorithm 1) with the configured target, loss and weights.

    Gathers batch `idx` from the on-device dataset, noises it at uniform timesteps, takes one
    AdamW step and updates the EMA. Returns {"loss", "grad_norm"}.
    """
    x0 = to_model_range(images_uint8[idx])
    if sharding is not None:  # split the batch across devices; XLA inserts the gradient all-reduce
        x0 = jax.lax.with_sharding_constraint(x0, sharding)
    t_key, n_key, l_key = jax.random.split(key, 3)
    t = sample_timesteps(t_key, x0.shape[0], schedule.num_timesteps)
    noise = jax.random.normal(n_key, x0.shape, x0.dtype)
    x_t = schedule.q_sample(x0, t, noise)
    target = prediction_target(cfg.prediction, x0, noise, schedule, t)
    weights = loss_weights(cfg.loss_weighting, cfg.prediction, schedule, t, cfg.min_snr_gamma)
    y = None
    if labels is not None:  # classifier-free guidance: drop the label with probability label_dropout
        y = labels[idx]
        drop = jax.random.uniform(l_key, y.shape) < cfg.label_dropout
        y = jnp.where(drop, cfg.model.num_classes, y)

    def loss_fn(model):
        pred = model(x_t, t, y)
        per_example = per_example_loss(cfg.loss, pred, target, cfg.huber_delta) * weights
        return masked_mean(per_example, mask)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    ema.update(model, optimizer.step.value)
    return {"loss": loss, "grad_norm": optax.global_norm(grads)}


def make_jit_train_step(schedule: NoiseSchedule, cfg: Config):
    """`train_step` compiled with `nnx.jit`: step(model, optimizer, ema, images, labels, idx, mask, key).

    One step at a time, as the notebooks show it; `Trainer` compiles the same function with
    split/merge around it, which costs less Python per step.
    """

    @nnx.jit
    def step(model, optimizer, ema, images_uint8, labels, idx, mask, key):
        return train_step(model, optimizer, ema, schedule, cfg, images_uint8, labels, idx, mask, key)

    return step


# ----------------------------------------------------------------------------- the loop


class Trainer:
    """Owns model, optimiser, EMA and the on-device dataset; runs compiled chunks of steps.

    The batch of global step s and its noise depend only on (seed, s), so a run resumed from a
    checkpoint at step s continues exactly as the uninterrupted run would have.
    """

    def __init__(self, cfg: Config, model: nnx.Module, images_uint8: np.ndarray, labels: np.ndarray | None = None,
                 total_steps: int | None = None, devices=None):
        cfg.validate(num_train_examples=len(images_uint8))
        self.cfg = cfg
        self.num_examples = int(len(images_uint8))
        self.total_steps = int(total_steps or cfg.total_steps(self.num_examples))
        self.steps_per_epoch = steps_per_epoch(self.num_examples, cfg.batch_size)
        self.schedule = NoiseSchedule.create(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
        self.lr_schedule = make_lr_schedule(cfg.learning_rate, cfg.warmup_steps, self.total_steps,
                                            cfg.end_lr_fraction)
        self.model = model
        self.optimizer = make_optimizer(model, self.lr_schedule, cfg.weight_decay, cfg.grad_clip)
        self.ema = EMA(model, cfg.ema_decay, cfg.ema_every, cfg.ema_warmup)
        self.guide = Guide(self.ema.model) if cfg.guide_fraction else None
        self.guide_step = (guide_step(cfg.guide_fraction, self.total_steps, cfg.log_every)
                           if cfg.guide_fraction else None)

        devices = list(devices or jax.local_devices())
        if cfg.batch_size % len(devices):
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {len(devices)} local devices.")
        self.mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                                  axis_types=(jax.sharding.AxisType.Auto,))
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        replicated = NamedSharding(self.mesh, P())
        self.images = jax.device_put(np.asarray(images_uint8, np.uint8), replicated)
        self.labels = None if labels is None or cfg.model.num_classes is None else \
            jax.device_put(np.asarray(labels, np.int32), replicated)
        root = jax.random.key(cfg.seed)
        self.data_key, self.step_key = jax.random.split(root)
        self.history: dict[str, list] = {"step": [], "epoch": [], "loss": [], "lr": [], "images_per_s": []}
        # Everything the step reads lives on the mesh from the start (replicated), so the first
        # and every later chunk see identical input shardings and compile once.
        self._replicated = replicated
        self._graphdef = nnx.graphdef((self.model, self.optimizer, self.ema))
        self.place_on_mesh()
        self._step_fn = jax.jit(self._step, donate_argnums=(0,))
        self._order_fn = jax.jit(lambda key, epoch: epoch_order(key, epoch, self.num_examples, cfg.batch_size),
                                 out_shardings=replicated)
        self._order, self._order_epoch = None, None

    # -------------------------------------------------------------- compiled pieces
    @property
    def step(self) -> int:
        """The number of optimiser steps taken so far (the global step)."""
        return int(self.optimizer.step.value)

    def modules(self) -> tuple:
        """What a checkpoint holds: model, optimiser, EMA and, with autoguidance, the guide."""
        return (self.model, self.optimizer, self.ema) + ((self.guide,) if self.guide is not None else ())

    def place_on_mesh(self) -> None:
        """Put model, optimiser and EMA on the mesh (replicated), so every chunk sees the same shardings."""
        state = nnx.state(self.modules())
        nnx.update(self.modules(), jax.device_put(state, self._replicated))

    def _step(self, state, images, labels, order, step_key, step):
        """One compiled step on the pure state (split/merge around the NNX `train_step`)."""
        model, optimizer, ema = nnx.merge(self._graphdef, state)
        idx, mask = batch_slice(order, step % self.steps_per_epoch, self.num_examples, self.cfg.batch_size)
        metrics = train_step(model, optimizer, ema, self.schedule, self.cfg, images, labels, idx, mask,
                             jax.random.fold_in(step_key, step), self.batch_sharding)
        return nnx.state((model, optimizer, ema)), metrics

    def epoch_order(self, epoch: int) -> jax.Array:
        """The (device) example order of `epoch`, computed once per epoch, not once per step."""
        if self._order_epoch != epoch:
            self._order = self._order_fn(self.data_key, jnp.int32(epoch))
            self._order_epoch = epoch
        return self._order

    def run_chunk(self, start: int, num_steps: int | None = None):
        """Dispatch steps [start, start + num_steps) without waiting; returns stacked device metrics.

        JAX dispatch is asynchronous: the steps are queued back to back and the host never waits
        between them; it reads the metrics of the whole chunk once.
        """
        n = min(num_steps or self.cfg.log_every, self.total_steps - start)
        state = nnx.state((self.model, self.optimizer, self.ema))
        out = []
        for s in range(start, start + n):
            order = self.epoch_order(s // self.steps_per_epoch)
            state, metrics = self._step_fn(state, self.images, self.labels, order, self.step_key, jnp.int32(s))
            out.append(metrics)
        nnx.update((self.model, self.optimizer, self.ema), state)
        return jax.tree.map(lambda *xs: jnp.stack(xs), *out)

    # -------------------------------------------------------------- the loop
    def fit(self, progress: bool = True, on_chunk: Callable[["Trainer"], None] | None = None,
            print_epochs: bool = True) -> dict[str, list]:
        """Train from the current step to `total_steps`; returns the history.

        `on_chunk(trainer)` runs after each chunk whose metrics have been read (checkpoints go there).
        Raises NonFiniteLossError at the first NaN/inf loss, before any callback sees that state.
        """
        from tqdm import tqdm  # the text bar: works in a terminal, in Jupyter and in rendered notebooks

        cfg, start = self.cfg, self.step
        bar = tqdm(total=self.total_steps, initial=start, desc="training", unit="step",
                   disable=not progress, dynamic_ncols=True)
        t_start = time.perf_counter()
        deadline = t_start + 60 * cfg.time_limit_minutes if cfg.time_limit_minutes else math.inf
        last_time, epoch_losses = time.perf_counter(), []
        chunk_start = last_time
        step = start
        try:
            while step < self.total_steps:
                metrics = self.run_chunk(step)
                losses = np.asarray(metrics["loss"])  # the one host read per chunk
                now = time.perf_counter()
                n = len(losses)
                if not np.all(np.isfinite(losses)):
                    bad = step + int(np.argmin(np.isfinite(losses)))
                    raise NonFiniteLossError(
                        f"The loss became {losses[~np.isfinite(losses)][0]} at step {bad}. The run stopped; the "
                        f"last good checkpoint is kept. Try a lower --learning-rate, keep --grad-clip on, "
                        f"or use --loss huber.")
                ips = n * cfg.batch_size / max(now - last_time, 1e-9)
                last_time = now
                steps = np.arange(step, step + n)
                lrs = np.asarray(self.lr_schedule(steps))  # optax uses lr(s) at step s
                for s, l, lr in zip(steps, losses, lrs):
                    epoch = int(s // self.steps_per_epoch)
                    self._record(int(s), epoch, float(l), float(lr), ips)
                    epoch_losses.append(float(l))
                    if (s + 1) % self.steps_per_epoch == 0 and print_epochs:
                        tqdm.write(f"epoch {epoch + 1}: avg loss {np.mean(epoch_losses):.4f}")
                        epoch_losses = []
                if self.guide is not None and step < self.guide_step <= step + n:
                    self.guide.take(self.ema.model, step + n)  # before any checkpoint of a later step
                step += n
                bar.update(n)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lrs[-1]:.2e}", img_s=f"{ips:.0f}")
                if on_chunk is not None:
                    on_chunk(self)
                # stop before a chunk that would end past the limit (the last one took chunk_seconds)
                chunk_seconds = time.perf_counter() - chunk_start
                chunk_start = time.perf_counter()
                if chunk_start + chunk_seconds > deadline and step < self.total_steps:
                    tqdm.write(f"time limit of {cfg.time_limit_minutes} min reached at step {step}.")
                    break
        finally:
            bar.close()
        return self.history

    def sample(self, key: jax.Array, num_samples: int, use_ema: bool = True, **kwargs):
        """Samples from this run's model: the EMA weights by default, the run's schedule, target and
        sampler settings unless overridden (see `helpers.sampling.sample`). A class-conditional model
        draws the labels 0, 1, ..., 9, 0, ... in turn with classifier-free guidance `cfg.guidance_scale`."""
        from helpers.sampling import sample

        cfg = self.cfg
        opts = dict(sampler=cfg.sampler, steps=cfg.sample_steps, eta=cfg.eta, prediction=cfg.prediction)
        if cfg.model.num_classes:
            opts.update(labels=jnp.arange(num_samples) % cfg.model.num_classes, guidance_scale=cfg.guidance_scale)
        w = kwargs.pop("autoguidance_scale", cfg.autoguidance_scale)
        if w is not None and w < 1.0:
            raise ValueError(f"autoguidance_scale must be at least 1 (1 turns autoguidance off), got {w}.")
        if w is not None and w != 1.0:
            if self.guide is None or not self.guide.ready:
                raise ValueError("Autoguidance needs the run's guide model, and this run has none "
                                 + ("(it was trained without --guide-fraction)." if self.guide is None else
                                    f"yet (it is taken after {cfg.guide_fraction:.0%} of the run).")
                                 + " Sample with autoguidance_scale 1 (--autoguidance-scale 1).")
            opts.update(guide=self.guide.model, autoguidance_scale=w)
        opts.update(kwargs)
        return sample(self.ema.model if use_ema else self.model, self.schedule, key, num_samples, **opts)

    def seconds_per_step(self, steps: int = 5) -> float:
        """Measured wall time of one train step after compilation (the state is restored afterwards)."""
        saved = jax.tree.map(jnp.copy, nnx.state((self.model, self.optimizer, self.ema)))
        start = self.step
        jax.block_until_ready(self.run_chunk(start, 1))  # compile
        t0 = time.perf_counter()
        metrics = jax.block_until_ready(self.run_chunk(start + 1, steps))
        dt = (time.perf_counter() - t0) / max(len(metrics["loss"]), 1)  # a short run may stop before `steps`
        nnx.update((self.model, self.optimizer, self.ema), saved)
        return dt

    def _record(self, step, epoch, loss, lr, ips):
        h = self.history
        h["step"].append(step)
        h["epoch"].append(epoch)
        h["loss"].append(loss)
        h["lr"].append(lr)
        h["images_per_s"].append(ips)
