"""Training: the optimiser and its learning-rate schedule, the EMA, the step, and the loop.

`train_step` is the whole of DDPM training (Ho et al. 2020, algorithm 1) with the configured target,
loss and weighting, written the NNX way (modules updated in place). `compiled_train_step` is its one
compiled form: `jax.jit` over the modules' pure state (split/merge around the step), because
`nnx.jit` walks the module graph in Python on every call, which costs more than a small model's step.
`Trainer` dispatches `log_every` steps back to back and reads their losses once per chunk; step s's
batch and noise depend only on (seed, s), so a resumed run continues exactly. Batches are sharded."""

from __future__ import annotations

import functools
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
from tqdm import tqdm  # the text bar: a terminal, Jupyter and the rendered notebooks all show it

from helpers.config import Config
from helpers.data import epoch_order, get_batch, steps_per_epoch
from helpers.losses import loss_weights, masked_mean, per_example_loss, prediction_target, sample_timesteps
from helpers.sampling import sample
from helpers.schedules import NoiseSchedule


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


def make_lr_schedule(peak: float, warmup_steps: int, total_steps: int, end_fraction: float = 0.01):
    """Linear warmup from 0 to `peak`, then cosine decay to `end_fraction * peak` at `total_steps`
    (optax counts the warmup inside `decay_steps`, so the schedule spans the whole run)."""
    warmup_steps = min(int(warmup_steps), max(int(total_steps) - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(int(total_steps), warmup_steps + 1), end_value=peak * end_fraction)


def scale_by_learning_rate_argument() -> optax.GradientTransformationExtraArgs:
    """updates -> -learning_rate * updates, the rate given to each update (`update(..., learning_rate=lr)`)."""
    def update(updates, state, params=None, *, learning_rate, **extra_args):
        return jax.tree.map(lambda u: -learning_rate * u, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


# AdamW (Loshchilov & Hutter 2019; optax.adamw's own chain) after global-norm clipping (Pascanu et al. 2013).
def make_optimizer(model: nnx.Module, weight_decay: float, grad_clip: float) -> nnx.Optimizer:
    """An `nnx.Optimizer` over the model's `nnx.Param` leaves. The learning rate is an argument of each
    step, not a schedule inside the optimiser: a run re-planned mid-way changes no compiled code."""
    clip = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    adamw = [optax.scale_by_adam(), optax.add_decayed_weights(weight_decay), scale_by_learning_rate_argument()]
    return nnx.Optimizer(model, optax.chain(*clip, *adamw), wrt=nnx.Param)


def ema_decay_at(decay: float, num_updates, warmup: bool = True):
    """decay_n = min(decay, (1 + n) / (10 + n)) after n updates with warm-up, else `decay`.

    Without warm-up an EMA of 0.9999 still holds 0.9999^n of the random initial weights after n
    updates, and samples from it are noise for most of a short run."""
    n = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n)) if warmup else jnp.asarray(decay, jnp.float32)


class EmaCount(nnx.Variable):
    """How many EMA updates have been applied (drives the decay warm-up)."""


def own_copy(model: nnx.Module) -> nnx.Module:
    """A clone of `model` with copies of its arrays, so that both can be donated to one jit call."""
    copy = nnx.clone(model)
    nnx.update(copy, jax.tree.map(jnp.copy, nnx.state(model)))
    return copy


class EMA(nnx.Module):
    """Exponential moving average of a model's parameters; `ema.model` is a full model to sample from."""

    def __init__(self, model: nnx.Module, decay: float = 0.9999, every: int = 1, warmup: bool = True):
        self.model = own_copy(model)
        self.decay, self.every, self.warmup = float(decay), int(every), bool(warmup)
        self.count = EmaCount(jnp.zeros((), jnp.int32))

    def update(self, model: nnx.Module, step) -> None:
        """After optimiser step `step`, every `every` steps: ema = d ema + (1 - d) params."""
        due = (jnp.asarray(step) % self.every) == 0
        d = jnp.where(due, ema_decay_at(self.decay, self.count[...], self.warmup), 1.0)
        ema_params = optax.incremental_update(nnx.state(model, nnx.Param), nnx.state(self.model, nnx.Param), 1.0 - d)
        nnx.update(self.model, ema_params)
        self.count[...] = self.count[...] + due.astype(jnp.int32)


class GuideStep(nnx.Variable):
    """The step at which the guide's weights were taken (-1: not yet)."""


class Guide(nnx.Module):
    """The weak model of autoguidance (Karras et al. 2024): a frozen copy of the EMA weights taken
    once, early in the run (`Config.guide_fraction`), and checkpointed with the rest."""

    def __init__(self, model: nnx.Module):
        self.model = own_copy(model)
        self.taken_at = GuideStep(jnp.array(-1, jnp.int32))

    def take(self, model: nnx.Module, step: int) -> None:
        """Copy `model`'s weights (the EMA model) into the guide, recording the step."""
        nnx.update(self.model, jax.tree.map(jnp.copy, nnx.state(model)))  # its own arrays: the EMA's are donated
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
    """The step at which the guide is taken: `fraction` of the run in whole chunks (the trainer
    reads its state only between chunks), at least one chunk and at most the whole run."""
    return int(min(total_steps, max(chunk, round(fraction * total_steps / chunk) * chunk)))


def train_step(model, optimizer: nnx.Optimizer, ema: EMA, schedule: NoiseSchedule, x0, labels, mask, key,
               learning_rate, cfg: Config):
    """One step on a batch x0 (B, 32, 32, 1) in [-1, 1]: noise it, one AdamW step at `learning_rate`, EMA update.

    Returns {"loss", "grad_norm"}; `mask` is 0 for the padding of an epoch's short last batch."""
    t_key, noise_key, label_key = jax.random.split(key, 3)
    t = sample_timesteps(t_key, x0.shape[0], schedule.num_timesteps)  # t ~ U{0, ..., T-1}
    noise = jax.random.normal(noise_key, x0.shape)  # eps ~ N(0, I)
    x_t = schedule.q_sample(x0, t, noise)  # x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps
    target = prediction_target(cfg.prediction, x0, noise, schedule, t)  # eps, v or x0
    weights = loss_weights(cfg.loss_weighting, cfg.prediction, schedule, t, cfg.min_snr_gamma)
    if labels is not None:  # classifier-free guidance (Ho & Salimans 2022): sometimes "no label"
        dropped = jax.random.uniform(label_key, labels.shape) < cfg.label_dropout
        labels = jnp.where(dropped, cfg.model.num_classes, labels)

    def loss_fn(model):
        pred = model(x_t, t, labels)
        return masked_mean(per_example_loss(cfg.loss, pred, target, cfg.huber_delta) * weights, mask)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads, learning_rate=learning_rate)
    ema.update(model, optimizer.step[...])
    return {"loss": loss, "grad_norm": optax.global_norm(grads)}


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"), donate_argnames=("state",))
def compiled_train_step(graphdef, state, schedule: NoiseSchedule, x0, labels, mask, key, learning_rate,
                        cfg: Config):
    """`train_step` on the pure state of (model, optimizer, ema), compiled once; the state's buffers
    are donated (updated in place). Returns (new state, metrics)."""
    model, optimizer, ema = nnx.merge(graphdef, state)
    metrics = train_step(model, optimizer, ema, schedule, x0, labels, mask, key, learning_rate, cfg)
    return nnx.state((model, optimizer, ema)), metrics


class Trainer:
    """A run's model, optimiser, EMA and guide, its data on the device (None: only to sample), the loop."""

    def __init__(self, cfg: Config, model: nnx.Module, images: np.ndarray | None = None,
                 labels: np.ndarray | None = None, total_steps: int | None = None, devices=None):
        self.cfg = cfg.validate(num_train_examples=None if images is None else len(images))
        self.num_examples = cfg.batch_size if images is None else len(images)
        self.steps_per_epoch = steps_per_epoch(self.num_examples, cfg.batch_size)
        self.schedule = NoiseSchedule.create(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
        self.data_key, self.step_key = jax.random.split(jax.random.key(cfg.seed))
        self.history: dict[str, list] = {"step": [], "epoch": [], "loss": [], "lr": [], "images_per_s": []}
        devices = list(devices or jax.local_devices())
        if cfg.batch_size % len(devices):
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {len(devices)} local devices.")
        mesh = jax.make_mesh((len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
        self.batch_sharding, self.replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        put = lambda a, dtype: None if a is None else jax.device_put(np.asarray(a, dtype), self.replicated)  # noqa: E731
        self.images = put(images, np.uint8)
        self.labels = put(labels, np.int32) if cfg.model.num_classes else None
        self.step_cfg = self.cfg  # what the compiled step reads: kept as it is when the plan changes
        self.model = model
        self.plan(total_steps or cfg.total_steps(self.num_examples))

        def build(model):  # an abstract model (nnx.eval_shape, as load_run builds it) gets abstract ones
            ema = EMA(model, cfg.ema_decay, cfg.ema_every, cfg.ema_warmup)
            return (make_optimizer(model, cfg.weight_decay, cfg.grad_clip), ema,
                    Guide(ema.model) if cfg.guide_fraction else None)

        abstract = isinstance(jax.tree.leaves(nnx.state(self.model))[0], jax.ShapeDtypeStruct)
        self.optimizer, self.ema, self.guide = nnx.eval_shape(build, self.model) if abstract else build(self.model)
        if not abstract:
            self.place_on_mesh()

    def plan(self, total_steps: int) -> None:
        """Set (or, mid-run, change) the run's length: the learning-rate schedule over `total_steps`
        and the guide's step. The optimiser, EMA and guide keep their state; nothing recompiles."""
        cfg, self.total_steps = self.cfg, int(total_steps)
        self.lr_schedule = make_lr_schedule(cfg.learning_rate, cfg.warmup_steps, self.total_steps, cfg.end_lr_fraction)
        self.guide_step = guide_step(cfg.guide_fraction, self.total_steps, cfg.log_every) if cfg.guide_fraction else None

    @property
    def step(self) -> int:
        """The number of optimiser steps taken so far (the global step)."""
        return int(self.optimizer.step[...])

    def modules(self) -> tuple:
        """What a checkpoint holds: model, optimiser, EMA and, with autoguidance, the guide."""
        return (self.model, self.optimizer, self.ema) + ((self.guide,) if self.guide is not None else ())

    def place_on_mesh(self) -> None:
        """Replicate the state on the mesh, so that every step sees the same input shardings."""
        nnx.update(self.modules(), jax.device_put(nnx.state(self.modules()), self.replicated))

    def run_chunk(self, start: int, num_steps: int | None = None) -> dict:
        """Dispatch steps [start, start + num_steps) without waiting; returns their stacked metrics."""
        if self.images is None:
            raise ValueError("This trainer holds no training data (a run loaded to sample from).")
        graphdef, state = nnx.split((self.model, self.optimizer, self.ema))
        order, order_epoch, out = None, None, []
        steps = np.arange(start, min(start + (num_steps or self.cfg.log_every), self.total_steps))
        learning_rates = np.asarray(self.lr_schedule(steps), np.float32)  # lr(s) at step s, as optax counts
        for s, learning_rate in zip(steps.tolist(), learning_rates):
            if s // self.steps_per_epoch != order_epoch:  # one permutation per epoch (helpers.data)
                order_epoch = s // self.steps_per_epoch
                order = epoch_order(self.data_key, order_epoch, self.num_examples, self.cfg.batch_size)
            x0, labels, mask = get_batch(self.images, self.labels, order, s % self.steps_per_epoch,
                                         self.cfg.batch_size, self.batch_sharding)
            state, metrics = compiled_train_step(graphdef, state, self.schedule, x0, labels, mask,
                                                 jax.random.fold_in(self.step_key, s), learning_rate, cfg=self.step_cfg)
            out.append(metrics)
        nnx.update((self.model, self.optimizer, self.ema), state)
        return jax.tree.map(lambda *xs: jnp.stack(xs), *out)

    def fit(self, progress: bool = True, on_chunk: Callable[["Trainer"], None] | None = None,
            replan: bool = False) -> dict[str, list]:
        """Train to `total_steps` or the time limit, calling `on_chunk(trainer)` after each chunk (checkpoints);
        NonFiniteLossError at the first NaN or inf loss, before any callback sees it. Returns the history.
        With `replan` (a run fitted to its time limit), every REPLAN_EVERY of the limit up to REPLAN_UNTIL
        the remaining steps are re-planned from the loop's own rate, checkpoints included, to end at PLAN_END;
        the guide is then taken at `guide_fraction` of a re-made plan, never of the first, timed guess."""
        limit = self.cfg.time_limit_minutes
        replan = bool(replan and limit)
        budget = 60 * limit if limit else math.inf  # seconds
        started = time.perf_counter()
        deadline, plan_end = started + budget, started + PLAN_END * budget
        clock, next_plan = None, REPLAN_EVERY if replan else math.inf  # clock: after the first chunk
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", unit="step", disable=not progress)
        with bar:
            while self.step < self.total_steps:
                chunk_start, start = time.perf_counter(), self.step
                losses = np.asarray(self.run_chunk(start)["loss"])  # the one host read per chunk
                seconds = time.perf_counter() - chunk_start
                record_chunk(self, start, losses, seconds)
                planned = not replan or next_plan > REPLAN_EVERY  # the guide waits for the first re-plan
                if self.guide is not None and not self.guide.ready and self.guide_step <= self.step and planned:
                    self.guide.take(self.ema.model, self.step)
                bar.update(len(losses))
                bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{len(losses) * self.cfg.batch_size / seconds:.0f}")
                if on_chunk is not None:
                    on_chunk(self)
                now = time.perf_counter()
                clock = clock or (now, self.step)  # the first chunk's compilation is no part of the rate
                if now - started >= next_plan * budget and clock[1] < self.step < self.total_steps:
                    next_plan = min(next_plan + REPLAN_EVERY, REPLAN_UNTIL) if next_plan < REPLAN_UNTIL - 1e-9 else math.inf
                    rate = (now - clock[0]) / (self.step - clock[1])
                    self.cfg = self.cfg.replace(max_steps=self.step + steps_that_fit(
                        rate, (plan_end - now) / 60, self.cfg.log_every, margin=1.0), fit_steps_to_time=True)
                    self.plan(self.cfg.max_steps)
                    bar.total = self.total_steps
                if now + (now - chunk_start) > deadline and self.step < self.total_steps:  # a chunk past the limit
                    tqdm.write(f"time limit of {limit:g} min reached at step {self.step}.")
                    break
        return self.history

    def sample(self, key: jax.Array, num_samples: int, use_ema: bool = True, **options):
        """Samples from the EMA (or raw) weights with the run's sampler settings unless `options` override
        them (`helpers.sampling.sample`); a class-conditional model draws the labels 0-9 in turn."""
        cfg = self.cfg
        opts = dict(sampler=cfg.sampler, steps=cfg.sample_steps, eta=cfg.eta, prediction=cfg.prediction)
        if cfg.model.num_classes:
            opts.update(labels=jnp.arange(num_samples) % cfg.model.num_classes, guidance_scale=cfg.guidance_scale)
        w = options.pop("autoguidance_scale", cfg.autoguidance_scale)
        if w != 1.0:
            if self.guide is None or not self.guide.ready:
                why = "it was trained without --guide-fraction" if self.guide is None else "none yet"
                raise ValueError(f"Autoguidance needs the run's guide model ({why}): use --autoguidance-scale 1.")
            opts.update(guide=self.guide.model, autoguidance_scale=w, autoguidance_interval=cfg.autoguidance_interval)
        opts.update(options)
        return sample(self.ema.model if use_ema else self.model, self.schedule, key, num_samples, **opts)


def record_chunk(trainer: Trainer, start: int, losses: np.ndarray, seconds: float) -> None:
    """Append a chunk's losses to the history; stop at a non-finite one; print finished epochs."""
    if not np.all(np.isfinite(losses)):
        bad = start + int(np.argmin(np.isfinite(losses)))
        raise NonFiniteLossError(
            f"The loss became {losses[bad - start]} at step {bad}. The run stopped; the last good checkpoint "
            f"is kept. Try a lower --learning-rate, keep --grad-clip on, or use --loss huber.")
    steps = np.arange(start, start + len(losses))
    h = trainer.history
    h["step"] += steps.tolist()
    h["epoch"] += (steps // trainer.steps_per_epoch).tolist()
    h["loss"] += losses.astype(float).tolist()
    h["lr"] += np.asarray(trainer.lr_schedule(steps), float).tolist()  # optax uses lr(s) at step s
    h["images_per_s"] += [len(losses) * trainer.cfg.batch_size / seconds] * len(losses)
    for s in steps[(steps + 1) % trainer.steps_per_epoch == 0]:  # epochs that ended in this chunk
        end = len(h["loss"]) - int(steps[-1] - s)
        tqdm.write(f"epoch {s // trainer.steps_per_epoch + 1}: avg loss "
                   f"{np.mean(h['loss'][max(0, end - trainer.steps_per_epoch):end]):.4f}")


FIT_MARGIN = 0.92  # share of the time limit the first plan, from a few timed steps, fills
REPLAN_EVERY, REPLAN_UNTIL = 0.1, 0.95  # a fitted run re-plans at 10%, 20%, ..., 90% and 95% of its time limit
PLAN_END = 0.98  # where the re-plans aim the last step: a little room for the last chunk and the final save


def steps_that_fit(seconds_per_step: float, minutes: float, chunk: int = 1, margin: float = FIT_MARGIN) -> int:
    """Steps of `seconds_per_step` that fill `margin` of `minutes`, in whole chunks (at least one)."""
    if not seconds_per_step > 0:
        raise ValueError(f"seconds_per_step must be positive, got {seconds_per_step}.")
    return max(chunk, int(margin * 60.0 * minutes / seconds_per_step) // chunk * chunk)


def seconds_per_step(trainer: Trainer, steps: int = 5) -> float:
    """Wall time of one compiled step of `trainer` on this machine; its state is restored afterwards."""
    saved = jax.tree.map(jnp.copy, nnx.state(trainer.modules()))
    jax.block_until_ready(trainer.run_chunk(trainer.step, 1))  # compile
    t0 = time.perf_counter()
    metrics = jax.block_until_ready(trainer.run_chunk(trainer.step, steps))
    seconds = (time.perf_counter() - t0) / max(len(metrics["loss"]), 1)
    nnx.update(trainer.modules(), saved)
    return seconds
