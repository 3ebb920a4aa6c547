"""Training: a state (`TrainState`, what a checkpoint holds), a plan (`Plan`, fixed before the first
step), a step (DDPM training, Ho et al. 2020, algorithm 1) and a loop (`train`, which calls small hooks
after each chunk of steps). Step s's batch and noise depend only on (seed, s): a resume continues exactly."""

import dataclasses
import functools
import signal
import threading
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm  # the text bar: a terminal, Jupyter and the rendered notebooks all show it

from helpers.config import QUICK_STEPS, Config, quick
from helpers.data import epoch_order, get_batch, steps_per_epoch
from helpers.distributed import any_process, replicate
from helpers.losses import (FLOW_TIME_SCALE, flow_matching_pair, flow_times, loss_weights, masked_mean,
                            log_normal_timesteps, per_example_loss, prediction_target, sample_timesteps)
from helpers.posthoc_ema import gamma_of, power_ema_beta
from helpers.schedules import NoiseSchedule
from helpers.unet import create_unet


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


def make_lr_schedule(peak: float, warmup_steps: int, total_steps: int, end_fraction: float = 0.01):
    """Linear warmup from 0 to `peak`, then cosine decay to `end_fraction * peak` at `total_steps`."""
    warmup_steps = min(int(warmup_steps), max(int(total_steps) - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(int(total_steps), warmup_steps + 1), end_value=peak * end_fraction)


def scale_by_learning_rate_argument() -> optax.GradientTransformationExtraArgs:
    """updates -> -learning_rate * updates, the rate given to each `update(..., learning_rate=lr)`."""
    def update(updates, state, params=None, *, learning_rate, **extra_args):
        return jax.tree.map(lambda u: -learning_rate * u, updates), state
    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


# AdamW (Loshchilov & Hutter 2019; optax.adamw's own chain) after global-norm clipping (Pascanu et al. 2013).
def make_optimizer(model: nnx.Module, weight_decay: float, grad_clip: float) -> nnx.Optimizer:
    """An `nnx.Optimizer` over the `nnx.Param` leaves; the learning rate is an argument of each step."""
    clip = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    adamw = [optax.scale_by_adam(), optax.add_decayed_weights(weight_decay), scale_by_learning_rate_argument()]
    return nnx.Optimizer(model, optax.chain(*clip, *adamw), wrt=nnx.Param)


def ema_decay_at(decay: float, num_updates, warmup: bool = True):
    """decay_n = min(decay, (1 + n) / (10 + n)) after n updates with warm-up, else `decay` (without it an
    EMA of 0.9999 still holds 0.9999^n of the random initial weights after n updates)."""
    n = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n)) if warmup else jnp.asarray(decay, jnp.float32)


def own_copy(model: nnx.Module) -> nnx.Module:
    """A clone of `model` with copies of its arrays, so that both can be donated to one jit call."""
    return nnx.merge(nnx.graphdef(model), jax.tree.map(jnp.copy, nnx.state(model)))


class EMA(nnx.Module):
    """Exponential moving average of a model's parameters; `ema.model` is a full model to sample from."""
    def __init__(self, model: nnx.Module, decay: float = 0.9999, every: int = 1, warmup: bool = True):
        self.model = own_copy(model)
        self.decay, self.every, self.warmup = float(decay), int(every), bool(warmup)
        self.count = nnx.Variable(jnp.zeros((), jnp.int32))  # updates so far (drives the warm-up)

    def update(self, model: nnx.Module, step) -> None:
        """After optimiser step `step`, every `every` steps: ema = d ema + (1 - d) params."""
        due = (jnp.asarray(step) % self.every) == 0
        d = jnp.where(due, ema_decay_at(self.decay, self.count[...], self.warmup), 1.0)
        ema_params = optax.incremental_update(nnx.state(model, nnx.Param), nnx.state(self.model, nnx.Param), 1.0 - d)
        nnx.update(self.model, ema_params)
        self.count[...] = self.count[...] + due.astype(jnp.int32)


class PowerEMA(nnx.Module):
    """Power-function EMAs of a model's parameters, one per length sigma_rel (Karras et al. 2024, eq. 4):
    after step t, avg = beta_t avg + (1 - beta_t) params with beta_t = (1 - 1/t)^(gamma + 1). Their
    snapshots let any EMA length be reconstructed after training (helpers.posthoc_ema)."""
    def __init__(self, model: nnx.Module, lengths: tuple[float, ...]):
        self.lengths, self.gammas = tuple(lengths), tuple(gamma_of(s) for s in lengths)
        self.models = nnx.List([own_copy(model) for _ in lengths])

    def update(self, model: nnx.Module, step) -> None:
        """After optimiser step `step` (>= 1)."""
        params, t = nnx.state(model, nnx.Param), jnp.asarray(step, jnp.float32)
        for average, gamma in zip(self.models, self.gammas):
            nnx.update(average, optax.incremental_update(params, nnx.state(average, nnx.Param),
                                                         1.0 - power_ema_beta(gamma, t)))

    def snapshot(self) -> list[list[np.ndarray]]:
        """Each average's parameters as host arrays, in the model's leaf order (what a snapshot file holds)."""
        return [[np.asarray(x) for x in jax.tree.leaves(nnx.state(m, nnx.Param))] for m in self.models]


class Guide(nnx.Module):
    """The weak model of autoguidance (Karras et al. 2024): a copy of the EMA weights taken once, early."""
    def __init__(self, model: nnx.Module):
        self.model = own_copy(model)
        self.taken_at = nnx.Variable(jnp.array(-1, jnp.int32))  # -1: not taken yet

    def take(self, model: nnx.Module, step: int) -> None:
        nnx.update(self.model, jax.tree.map(jnp.copy, nnx.state(model)))  # its own arrays: the EMA's are donated
        self.taken_at[...] = jax.device_put(np.int32(step), self.taken_at[...].sharding)

    @property
    def step(self) -> int:  # the training step whose EMA weights the guide holds (-1: not taken yet)
        return int(self.taken_at[...])


def guide_step(fraction: float, total_steps: int, chunk: int) -> int:
    """`fraction` of the run in whole chunks, at least one chunk and at most the whole run."""
    return int(min(total_steps, max(chunk, round(fraction * total_steps / chunk) * chunk)))


class TrainState(nnx.Module):
    """What a run changes, and its checkpoint holds: model, optimiser (whose count is the step), EMA,
    autoguidance guide (or None) and the data-order and noise keys as raw uint32 key data."""
    def __init__(self, cfg: Config):
        self.model = create_unet(cfg.model, seed=cfg.seed)
        self.optimizer = make_optimizer(self.model, cfg.weight_decay, cfg.grad_clip)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_every, cfg.ema_warmup)
        self.guide = Guide(self.ema.model) if cfg.guide_fraction else None
        self.power_ema = PowerEMA(self.model, cfg.ema_lengths) if cfg.ema_lengths else None
        self.keys = nnx.Variable(jax.random.key_data(jax.random.split(jax.random.key(cfg.seed))))

    @property
    def step(self) -> int:
        return int(self.optimizer.step[...])


def noise_schedule(cfg: Config) -> NoiseSchedule:
    """The run's noise schedule (notebook 02)."""
    return NoiseSchedule.create(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run does, fixed by `make_plan` before its first step."""
    total_steps: int
    steps_per_epoch: int
    learning_rate: Callable  # step -> the warmup + cosine learning rate over total_steps
    guide_step: int | None  # when the EMA weights are copied into the autoguidance guide
    checkpoint_steps: tuple[int, ...]  # every checkpoint_every steps, and the last step
    chunk_ends: tuple[int, ...]  # where the loop stops to read the losses and call the hooks

    def chunks(self, start: int):
        """(first, stop) of each chunk from step `start` to the end of the run."""
        ends = [e for e in self.chunk_ends if e > start]
        return zip([start] + ends[:-1], ends)

    def describe(self) -> dict:  # what plan.json holds
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("learning_rate", "chunk_ends")}


def make_plan(cfg: Config, num_examples: int, total_steps: int | None = None) -> Plan:
    """`cfg`'s plan over `total_steps` (a time budget's), else max_steps, else the epochs (in a quick check,
    at most QUICK_STEPS). Chunks end every log_every steps, at each checkpoint and at the guide's step."""
    spe = steps_per_epoch(num_examples, cfg.batch_size)
    total = int(total_steps or cfg.max_steps or cfg.epochs * spe)
    total = min(total, QUICK_STEPS) if quick() else total
    guide = guide_step(cfg.guide_fraction, total, cfg.log_every) if cfg.guide_fraction else None
    checkpoints = tuple(sorted({*range(cfg.checkpoint_every, total, cfg.checkpoint_every), total}))
    ends = {*range(cfg.log_every, total, cfg.log_every), *checkpoints, *([guide] if guide else [])}
    return Plan(total, spe, make_lr_schedule(cfg.learning_rate, cfg.warmup_steps, total, cfg.end_lr_fraction),
                guide, checkpoints, tuple(sorted(ends)))


def steps_for_minutes(seconds_per_step: float, minutes: float, chunk: int = 1) -> int:
    """The steps of `seconds_per_step` that fill `minutes`, in whole chunks (at least one)."""
    if not seconds_per_step > 0:
        raise ValueError(f"seconds_per_step must be positive, got {seconds_per_step}.")
    return max(chunk, int(60.0 * minutes / seconds_per_step) // chunk * chunk)


def train_step(model, optimizer: nnx.Optimizer, ema: EMA, schedule: NoiseSchedule, x0, labels, mask, key,
               learning_rate, cfg: Config, power_ema: PowerEMA | None = None):
    """One step on a batch x0 (B, 32, 32, 1) in [-1, 1]: noise it (DDPM, or flow matching's straight path),
    one AdamW step at `learning_rate`, EMA updates (and the power EMAs', if tracked). Returns {"loss", "grad_norm"}; `mask` is 0 for the
    padding of an epoch's short last batch."""
    t_key, noise_key, label_key = jax.random.split(key, 3)
    noise = jax.random.normal(noise_key, x0.shape)  # eps ~ N(0, I)
    if cfg.objective == "flow":  # t ~ U(0, 1) or logit-normal; x_t on the straight path, target eps - x0
        t = flow_times(t_key, x0.shape[0], cfg.flow_times)
        (x_t, target), t, weights = flow_matching_pair(x0, noise, t), FLOW_TIME_SCALE * t, 1.0
    else:
        t = (sample_timesteps(t_key, x0.shape[0], schedule.num_timesteps) if cfg.noise_levels == "uniform"
             else log_normal_timesteps(t_key, x0.shape[0], schedule))  # t ~ U{0, ..., T-1}, or EDM's
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
    if power_ema is not None:
        power_ema.update(model, optimizer.step[...])
    return {"loss": loss, "grad_norm": optax.global_norm(grads)}


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"), donate_argnames=("state",))
def compiled_train_step(graphdef, state, x0, labels, mask, step, learning_rate, cfg: Config):
    """`train_step` on a `TrainState`'s donated arrays (`nnx.jit` would walk the module graph in Python
    at every call), with key fold_in(noise key, step); returns (new state, metrics)."""
    ts = nnx.merge(graphdef, state)
    key = jax.random.fold_in(jax.random.wrap_key_data(ts.keys[...][1]), step)
    metrics = train_step(ts.model, ts.optimizer, ts.ema, noise_schedule(cfg), x0, labels, mask, key,
                         learning_rate, cfg, ts.power_ema)
    return nnx.state(ts), metrics


class BatchFeed:
    """The training images on every device of the mesh and each step's batch, gathered there from an
    on-device permutation per epoch (the state's data key). The batch is split along the mesh's `data`
    axis inside the jitted gather, so each device keeps its own rows, whichever process it belongs to."""
    def __init__(self, cfg: Config, state: TrainState, images: np.ndarray, labels: np.ndarray | None, mesh):
        self.mesh, self.batch_size, self.num_examples = mesh, cfg.batch_size, len(images)
        self.steps_per_epoch = steps_per_epoch(len(images), cfg.batch_size)
        conditional = labels is not None and cfg.model.num_classes
        self.images, self.labels = replicate((np.asarray(images, np.uint8),
                                              np.asarray(labels, np.int32) if conditional else None), mesh)
        self.split = NamedSharding(mesh, P("data"))
        key_data = np.asarray(state.keys[...].addressable_data(0))[0]  # the data-order key
        self.shuffle = jax.jit(lambda epoch: epoch_order(jax.random.wrap_key_data(key_data), epoch, len(images),
                                                         cfg.batch_size), out_shardings=NamedSharding(mesh, P()))
        self.epoch, self.order = None, None

    def batch(self, step: int):
        """(x0, labels or None, mask) of global step `step`, split over the mesh."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self.epoch:  # one permutation per epoch (helpers.data)
            self.epoch, self.order = epoch, self.shuffle(epoch)
        return get_batch(self.images, self.labels, self.order, position, self.batch_size, self.split)


def place_state(state: TrainState, mesh) -> TrainState:
    """Replicate the state on every device of `mesh` (in place; each process holds the same values)."""
    nnx.update(state, replicate(nnx.state(state), mesh))
    return state


def run_chunk(state: TrainState, feed: BatchFeed, plan: Plan, cfg: Config, start: int, stop: int) -> dict:
    """Dispatch steps [start, stop) without waiting for them; returns their stacked metrics (on the device)."""
    graphdef, pure = nnx.split(state)
    learning_rates = np.asarray(plan.learning_rate(np.arange(start, stop)), np.float32)  # lr(s) at step s
    out = []
    try:
        for s, learning_rate in zip(range(start, stop), learning_rates):
            x0, labels, mask = feed.batch(s)
            pure, metrics = compiled_train_step(graphdef, pure, x0, labels, mask, np.int32(s), learning_rate, cfg=cfg)
            out.append(metrics)
    finally:  # an interrupt too leaves the state on the newest arrays (the step donates the ones before)
        nnx.update(state, pure)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *out)


class Chunk(NamedTuple):
    """What each hook gets after a chunk: steps [start, stop), their losses (read), the wall time."""
    start: int
    stop: int
    losses: np.ndarray
    seconds: float


def train(state: TrainState, feed: BatchFeed, plan: Plan, cfg: Config, hooks=()) -> None:
    """Train from `state.step` to `plan.total_steps`, calling each hook with (state, chunk) after each chunk."""
    for start, stop in plan.chunks(state.step):
        t0 = time.perf_counter()
        losses = np.asarray(run_chunk(state, feed, plan, cfg, start, stop)["loss"])  # the one host read per chunk
        chunk = Chunk(start, stop, losses, time.perf_counter() - t0)
        for hook in hooks:
            hook(state, chunk)


def stop_at_non_finite_loss(state: TrainState, chunk: Chunk) -> None:
    """Hook: raise NonFiniteLossError at the first NaN or inf loss, before any later hook saves it."""
    if not np.all(np.isfinite(chunk.losses)):
        bad = chunk.start + int(np.argmin(np.isfinite(chunk.losses)))
        raise NonFiniteLossError(
            f"The loss became {chunk.losses[bad - chunk.start]} at step {bad}. The run stopped; the last good "
            f"checkpoint is kept. Try a lower --learning-rate, keep --grad-clip on, or use --loss huber.")


class StopOnCtrlC:
    """Hook, and a `with` block around training: Ctrl-C stops the run after the current chunk and its hooks,
    so no step or checkpoint is cut in half; a second Ctrl-C stops at once. With several processes, all
    stop after the same chunk."""
    def __enter__(self):
        self.asked, self.previous = False, signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread():  # Python handles signals there only
            signal.signal(signal.SIGINT, self._ask)
        return self

    def _ask(self, *_):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def __exit__(self, *exc):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.SIG_DFL)

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        if any_process(self.asked):
            raise KeyboardInterrupt


def take_guide_at(step: int | None):
    """Hook: copy the EMA weights into the autoguidance guide at the plan's guide step."""
    def take_guide(state: TrainState, chunk: Chunk) -> None:
        if state.guide is not None and chunk.stop == step:
            state.guide.take(state.ema.model, step)

    return take_guide


class History:
    """Hook: each step's loss, learning rate and images/s (history.json); logs each epoch's mean loss."""
    def __init__(self, plan: Plan, batch_size: int, record: dict | None = None, log=tqdm.write):
        self.plan, self.batch_size, self.log = plan, batch_size, log
        self.record = record or {"step": [], "epoch": [], "loss": [], "lr": [], "images_per_s": []}

    def __call__(self, state: TrainState, chunk: Chunk) -> None:
        steps, spe, h = np.arange(chunk.start, chunk.stop), self.plan.steps_per_epoch, self.record
        h["step"] += steps.tolist()
        h["epoch"] += (steps // spe).tolist()
        h["loss"] += chunk.losses.astype(float).tolist()
        h["lr"] += np.asarray(self.plan.learning_rate(steps), float).tolist()  # optax uses lr(s) at step s
        h["images_per_s"] += [len(steps) * self.batch_size / chunk.seconds] * len(steps)
        for s in steps[(steps + 1) % spe == 0]:  # epochs that ended in this chunk
            end = len(h["loss"]) - (chunk.stop - 1 - int(s))
            self.log(f"epoch {s // spe + 1}: avg loss {np.mean(h['loss'][max(0, end - spe):end]):.4f}")


def seconds_per_step(cfg: Config, feed: BatchFeed, steps: int = 20, warmup: int = 10) -> float:
    """Wall time of one compiled step of `cfg` here, timed on a throwaway state after `warmup` untimed steps
    (the first ones after compiling run slower); the run reuses the compiled step."""
    state = place_state(TrainState(cfg), feed.mesh)
    plan = make_plan(cfg, feed.num_examples, total_steps=warmup + steps + 1)
    jax.block_until_ready(run_chunk(state, feed, plan, cfg, 0, warmup + 1))  # compiles, then warms up
    t0 = time.perf_counter()
    jax.block_until_ready(run_chunk(state, feed, plan, cfg, warmup + 1, warmup + steps + 1))
    return (time.perf_counter() - t0) / steps
