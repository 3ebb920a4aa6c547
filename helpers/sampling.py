"""Samplers over explicit (t, t_prev) pairs of the one `NoiseSchedule`, each one `lax.scan` under `jit`:
DDIM and, as its eta = 1 case over every step, DDPM; DPM-Solver++(2M) and its SDE form. For flow-matching
runs, Euler and Heun on the ODE dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data).

t_prev = -1 is the clean image (alpha_bar = 1).

| symbol | meaning |
| --- | --- |
| ab_t, ab_prev | alpha_bar at t and at t_prev |
| alpha, sigma | sqrt(ab) and sqrt(1 - ab): x_t = alpha x0 + sigma eps |
| lambda | log(alpha / sigma), half the log signal-to-noise ratio |
| x0_hat, eps_hat | the network's estimate of the clean image and of the noise, at t |"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from helpers.config import FLOW_SAMPLERS, SAMPLERS
from helpers.losses import FLOW_TIME_SCALE, to_x0_and_eps
from helpers.schedules import NoiseSchedule, per_image


def ddim_pairs(num_timesteps: int, steps: int) -> np.ndarray:
    """(steps, 2) pairs over `steps` timesteps evenly spaced from T-1 down to 0, then to -1."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sample steps must be in 1..{num_timesteps} (the schedule's timesteps), got {steps}.")
    t = np.unique(np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(np.int32))[::-1]
    return np.stack([t, np.append(t[1:], -1)], axis=1).astype(np.int32)


def lambda_pairs(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """Like `ddim_pairs`, at the timesteps nearest to `steps` values of lambda evenly spaced from lambda_{T-1}
    to lambda_0 (the logSNR spacing of Lu et al. 2022), each below the one before."""
    lam, num_timesteps = np.asarray(0.5 * np.log(schedule.snr())), schedule.num_timesteps
    ddim_pairs(num_timesteps, steps)  # checks steps
    t = [num_timesteps - 1]
    for i, target in enumerate(np.linspace(lam[-1], lam[0], steps)[1:], start=1):
        t.append(int(np.clip(np.argmin(np.abs(lam - target)), steps - 1 - i, t[-1] - 1)))
    return np.stack([t, t[1:] + [-1]], axis=1).astype(np.int32)


# DDIM (Song et al. 2021): eq. 12, with sigma from eq. 16.
@struct.dataclass
class DDIMSampler:
    """Any number of steps; eta = 0 is deterministic. With eta = 1 over every one of the T steps,
    sigma^2 is the DDPM posterior variance and the update is DDPM's ancestral step, sampling from
    p(x_{t-1} | x_t) = N(mu_tilde, beta_tilde I) (Ho et al. 2020, eqs. 6-7; Song et al. 2021, sec. 4.1)."""
    schedule: NoiseSchedule
    steps: int = struct.field(pytree_node=False, default=100)
    eta: float = 0.0

    def pairs(self) -> np.ndarray:  # the (t, t_prev) pairs this sampler steps over
        return ddim_pairs(self.schedule.num_timesteps, self.steps)

    def sigma(self, t, t_prev):
        """sigma_t(eta) = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev) (eq. 16)."""
        ab_t, ab_prev = self.schedule.alpha_bar_at(t), self.schedule.alpha_bar_at(t_prev)
        return self.eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))

    def step(self, x_t, x0_hat, eps_hat, t, t_prev, noise, x0_before=None, t_before=None):
        """x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z (eq. 12).
        (`x0_before` and `t_before` are for multistep samplers.)"""
        ab_prev, sigma = self.schedule.alpha_bar_at(t_prev), self.sigma(t, t_prev)
        direction = jnp.sqrt(jnp.clip(1.0 - ab_prev - sigma**2, 0.0, None)) * eps_hat
        return jnp.sqrt(ab_prev) * x0_hat + direction + sigma * noise


# DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2) and its SDE form (ibid., sec. 5 / appendix).
@struct.dataclass
class DPMSolverPP:
    """A second-order multistep solver in lambda: it reuses the previous step's x0_hat to extrapolate,
    so it costs one network evaluation per step, like DDIM. Its first and last steps are first order,
    where it equals DDIM with eta = 0 (ODE) or eta = 1 (SDE)."""
    schedule: NoiseSchedule
    steps: int = struct.field(pytree_node=False, default=20)
    sde: bool = struct.field(pytree_node=False, default=False)

    def pairs(self) -> np.ndarray:  # evenly spaced in lambda, where the solver is accurate (not even in t)
        return lambda_pairs(self.schedule, self.steps)

    def log_alpha_over_sigma(self, t):  # lambda_t = log(alpha_t / sigma_t) = log(SNR_t) / 2; +inf at t = -1
        return 0.5 * jnp.log(self.schedule.snr(t))

    def step(self, x_t, x0_hat, eps_hat, t, t_prev, noise, x0_before=None, t_before=None):
        """With h = lambda_prev - lambda_t and r = h_before / h:
        D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_before  (x0_hat alone on the first and last steps);
        ODE: x_prev = (sigma_prev / sigma_t) x_t + alpha_prev (1 - e^-h) D;
        SDE: x_prev = (sigma_prev / sigma_t) e^-h x_t + alpha_prev (1 - e^-2h) D + sigma_prev sqrt(1 - e^-2h) z."""
        ab_t, ab_prev = self.schedule.alpha_bar_at(t), self.schedule.alpha_bar_at(t_prev)
        alpha_prev, sigma_prev, sigma_t = jnp.sqrt(ab_prev), jnp.sqrt(1.0 - ab_prev), jnp.sqrt(1.0 - ab_t)
        lam = self.log_alpha_over_sigma
        h = lam(t_prev) - lam(t)
        d = x0_hat
        if t_before is not None:  # second order, except on the first step (t_before = -1) and the last
            second_order = (t_before >= 0) & (t_prev >= 0)
            r = jnp.where(second_order, (lam(t) - lam(jnp.maximum(t_before, 0))) / h, 1.0)
            d = d + jnp.where(second_order, 0.5 / r, 0.0) * (x0_hat - x0_before)
        decay = jnp.exp(-h)  # e^-h = (alpha_t sigma_prev) / (sigma_t alpha_prev); 0 at the clean image
        if not self.sde:
            return sigma_prev / sigma_t * x_t + alpha_prev * (1.0 - decay) * d
        return (sigma_prev / sigma_t * decay * x_t + alpha_prev * (1.0 - decay**2) * d
                + sigma_prev * jnp.sqrt(1.0 - decay**2) * noise)


@struct.dataclass
class FlowSampler:
    """Euler, or Heun's second-order method, from t = 1 to 0 over `steps` equal steps in t."""
    steps: int = struct.field(pytree_node=False, default=50)
    heun: bool = struct.field(pytree_node=False, default=False)

    def pairs(self) -> np.ndarray:  # (t, t_next) per step, float32
        t = np.linspace(1.0, 0.0, self.steps + 1, dtype=np.float32)
        return np.stack([t[:-1], t[1:]], axis=1)


# Euler, or Heun (Karras et al. 2022, algorithm 1: Euler on the last step), on the flow ODE dx/dt = v(x, t).
def flow_step(velocity, x, t, t_next, heun: bool):
    """x_next = x + h d with h = t_next - t and d = v(x, t); Heun averages d with the slope at the Euler
    point, d' = v(x + h d, t_next): x_next = x + h (d + d') / 2. Returns (x_next, x0_hat = x - t d)."""
    d = velocity(x, t)
    x_next = x + (t_next - t) * d
    if heun:
        x_next = jax.lax.cond(t_next > 0, lambda: x + (t_next - t) * 0.5 * (d + velocity(x_next, t_next)),
                              lambda: x_next)
    return x_next, x - t * d


def make_sampler(schedule: NoiseSchedule, sampler: str = "ddim", steps: int = 100, eta: float = 0.0):
    """`ddim` (1..T steps, eta in [0, 1]), `ddpm` (eta = 1 over all T steps), `dpmpp_2m` or
    `dpmpp_2m_sde` (1..T steps; eta does not apply), `euler` or `heun` (flow matching, any steps >= 1);
    the one place they are checked."""
    if sampler in FLOW_SAMPLERS:
        if steps < 1:
            raise ValueError(f"sample steps must be at least 1, got {steps}.")
        return FlowSampler(int(steps), heun=sampler == "heun")
    if sampler == "ddpm":
        return DDIMSampler(schedule, schedule.num_timesteps, 1.0)
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}.")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0: deterministic DDIM), got {eta}.")
    ddim_pairs(schedule.num_timesteps, steps)
    if sampler == "ddim":
        return DDIMSampler(schedule, int(steps), float(eta))
    return DPMSolverPP(schedule, int(steps), sde=sampler == "dpmpp_2m_sde")


# Classifier-free guidance (Ho & Salimans 2022, eq. 6).
def model_output(model, x, t, labels=None, guidance_scale=None):
    """The network output at (x, t); with labels and a scale w, out_uncond + w (out_cond - out_uncond)."""
    tt = jnp.full((x.shape[0],), t)
    if labels is None or guidance_scale is None:
        return model(x, tt, labels)
    null = jnp.full_like(labels, model.cfg.num_classes)
    both = model(jnp.concatenate([x, x]), jnp.concatenate([tt, tt]), jnp.concatenate([labels, null]))
    cond, uncond = jnp.split(both, 2)
    return uncond + guidance_scale * (cond - uncond)


@dataclasses.dataclass(frozen=True)
class Autoguidance:
    """Sample with autoguidance: a weak `guide` model (the run's EMA weights early in training), the
    scale w > 1, and optionally an interval (t_low, t_high) of timesteps outside which it is not run.
    A sampler gets one of these or None (no autoguidance): the choice is made once, by the caller."""
    guide: nnx.Module
    scale: float
    interval: tuple[int, int] | None = None


# Autoguidance (Karras et al. 2024, eq. 2), optionally in a limited interval (Kynkaanniemi et al. 2024).
def autoguided_output(model, guide, x, t, labels=None, guidance_scale=None, scale=None, interval=None):
    """out_guide + w (out_model - out_guide) with w = `scale`, where the guide is a weaker version of the
    same model: samples move away from what the weak model gets wrong. With `interval` = (t_low, t_high),
    only at t_low <= t <= t_high; elsewhere the guide is not run. No guide: the model's output."""
    out = model_output(model, x, t, labels, guidance_scale)
    if guide is None:
        return out

    def guided():
        weak = model_output(guide, x, t, labels, guidance_scale)
        return weak + scale * (out - weak)

    if interval is None:
        return guided()
    return jax.lax.cond((interval[0] <= t) & (t <= interval[1]), guided, lambda: out)


@functools.partial(nnx.jit, static_argnames=("prediction", "clip_x0", "trajectory"))
def _sample_scan(model, guide, sampler, x_T, pairs, key, labels, guidance_scale, scale, interval, prediction,
                 clip_x0, trajectory):
    """Run `sampler` over `pairs` from x_T; returns x_0 and, with `trajectory`, every (x_prev, x0_hat)."""
    def output(x, t):
        return autoguided_output(model, guide, x, t, labels, guidance_scale, scale, interval)

    if isinstance(sampler, FlowSampler):  # the network sees FLOW_TIME_SCALE t (helpers.losses)
        def flow_body(x, t_pair):
            x_next, x0_hat = flow_step(lambda x, t: output(x, FLOW_TIME_SCALE * t), x, t_pair[0], t_pair[1],
                                       sampler.heun)
            return x_next, ((x_next, x0_hat) if trajectory else None)

        return jax.lax.scan(flow_body, x_T, pairs)
    schedule = sampler.schedule

    def body(carry, inputs):
        x, x0_before, t_before = carry  # the previous step's estimate, for multistep samplers
        (t, t_prev), k = inputs
        tb = jnp.full((x.shape[0],), t)
        x0_hat, eps_hat = to_x0_and_eps(prediction, output(x, t), x, schedule, tb)
        if clip_x0:  # keep x0_hat in the data range, then make eps_hat consistent with it
            x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
            ab = per_image(schedule.alpha_bar_at(tb), x)
            eps_hat = (x - jnp.sqrt(ab) * x0_hat) / jnp.sqrt(1.0 - ab)
        noise = jax.random.normal(k, x.shape, x.dtype)
        x_prev = sampler.step(x, x0_hat, eps_hat, t, t_prev, noise, x0_before, t_before)
        return (x_prev, x0_hat, t), ((x_prev, x0_hat) if trajectory else None)

    start = (x_T, jnp.zeros_like(x_T), jnp.int32(-1))  # t_before = -1: no previous step
    (x, _, _), steps = jax.lax.scan(body, start, (pairs, jax.random.split(key, pairs.shape[0])))
    return x, steps


def network_evaluations(sampler, interval=None, guided: bool = False) -> int:
    """How many times a sample runs the network: once per step (twice for Heun's, except on its last),
    twice as often where autoguidance is on."""
    pairs = sampler.pairs()
    heun = isinstance(sampler, FlowSampler) and sampler.heun
    t = np.concatenate([pairs[:, 0], pairs[pairs[:, 1] > 0, 1] if heun else []])
    t = t * FLOW_TIME_SCALE if isinstance(sampler, FlowSampler) else t
    if not guided:
        return len(t)
    return len(t) + int(np.sum((interval[0] <= t) & (t <= interval[1])) if interval is not None else len(t))


def sample(model: nnx.Module, schedule: NoiseSchedule | None, key: jax.Array, num_samples: int, *,
           sampler: str = "ddim", steps: int = 100, eta: float = 0.0, prediction: str = "epsilon",
           clip_x0: bool = True, labels=None, guidance_scale: float | None = None,
           autoguidance: Autoguidance | None = None, return_trajectory: bool = False, batch_size: int = 500,
           x_T=None):
    """Draw `num_samples` images in [-1, 1], (N, H, W, C), from `model` (pass the EMA model).

    With `autoguidance`, steps also run its guide (two network evaluations), every step or those in its
    interval. `x_T` gives the starting noise (e.g. `slerp` between two seeds); by default it is drawn
    from `key`. `return_trajectory=True` also returns (x_t after each step, x0_hat at each step), each
    (steps, N, H, W, C), and the (t, t_prev) pairs. Flow-matching samplers (`euler`, `heun`) need no
    schedule and ignore `prediction`, `eta` and `clip_x0`."""
    smp = make_sampler(schedule, sampler, steps, eta)
    pairs = jnp.asarray(smp.pairs())
    cfg = model.cfg
    key_x, key_steps = jax.random.split(key)
    if x_T is None:
        x_T = jax.random.normal(key_x, (num_samples, cfg.image_size, cfg.image_size, cfg.in_channels))  # N(0, I)
    labels = None if labels is None else jnp.asarray(labels, jnp.int32)
    ag = autoguidance
    interval = None if ag is None or ag.interval is None else jnp.asarray(ag.interval, jnp.int32)
    as32 = lambda v: None if v is None else jnp.float32(v)  # noqa: E731
    model, guide = nnx.clone(model), None if ag is None else nnx.clone(ag.guide)
    for m in (model, guide):  # dropout off, on copies: the caller's models stay as they are
        if m is not None:
            m.eval()
    outs, trajectories = [], []
    for i, start in enumerate(range(0, len(x_T), batch_size)):
        batch = slice(start, start + batch_size)
        x, trajectory = _sample_scan(model, guide, smp, x_T[batch], pairs, jax.random.fold_in(key_steps, i),
                                     None if labels is None else labels[batch], as32(guidance_scale),
                                     None if ag is None else as32(ag.scale), interval, prediction, clip_x0,
                                     return_trajectory)
        outs.append(x)
        trajectories.append(trajectory)
    x = jnp.clip(jnp.concatenate(outs), -1.0, 1.0)
    if not return_trajectory:
        return x
    xs, x0s = (jnp.concatenate([tr[i] for tr in trajectories], axis=1) for i in (0, 1))
    return x, (xs, x0s, np.asarray(pairs))
