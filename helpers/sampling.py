"""Samplers over explicit (t, t_prev) pairs of the one `NoiseSchedule`, each one `lax.scan` under `jit`:
DDIM and, as its eta = 1 case over every timestep, DDPM; DPM-Solver++(2M) and its SDE form. For flow-matching
runs, Euler and Heun on the ODE dx/dt = v(x, t) from noise (t near 1) to data (t = 0).

Every sampler but DDPM steps over one time grid (`time_grid`): noise levels evenly spaced in lambda from
`START_LAMBDA`, where the signal is under 1% of the image, to the schedule's cleanest timestep; the last step
goes to the clean image (t_prev = -1, alpha_bar = 1). A flow sampler visits the same noise levels, at the
flow times of equal signal-to-noise ratio (`helpers.losses.flow_time`).

| symbol | meaning |
| --- | --- |
| ab_t, ab_prev | alpha_bar at t and at t_prev |
| alpha, sigma | sqrt(ab) and sqrt(1 - ab): x_t = alpha x0 + sigma eps |
| lambda | log(alpha / sigma), half the log signal-to-noise ratio |
| x0_hat, eps_hat | the network's estimate of the clean image and of the noise, at t |"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from helpers.losses import FLOW_TIME_SCALE, flow_time, to_x0_and_eps
from helpers.schedules import NoiseSchedule

DDPM_SAMPLERS = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_sde")
FLOW_SAMPLERS = ("euler", "heun")  # ODE solvers for a flow-matching run
SAMPLERS = DDPM_SAMPLERS + FLOW_SAMPLERS

#: Where every sampler starts: lambda = log(alpha / sigma) = -4.8, a signal of 0.8% of the noise. The cosine
#: schedule's clipped last betas fall far below it (lambda = -9.9 at t = 999, -4.85 at 994), where a step
#: changes nothing; DPM-Solver's code ends that schedule here too (t = 0.9946; Lu et al. 2022).
START_LAMBDA = -4.8


def max_sample_steps(schedule: NoiseSchedule) -> int:
    """How many steps a sampler can take: one per timestep from the first (see `time_grid`) to t = 0."""
    return _first_timestep(_lambdas(schedule)) + 1


def time_grid(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """The `steps` timesteps a sampler evaluates the network at, noisiest first. The first is the least noisy
    timestep at or past START_LAMBDA (the schedule's last, when none is that noisy); the others are the
    timesteps nearest to lambda values evenly spaced from there as if to lambda_0, `steps` intervals, the last
    of which the final step replaces by the jump to the clean image: so the last evaluation lands where it
    still acts (the "trailing" spacing of Lin et al. 2024)."""
    lam = _lambdas(schedule)
    first = _first_timestep(lam)
    if not 1 <= steps <= first + 1:
        raise ValueError(f"sample steps must be in 1..{first + 1} (the timesteps from lambda = {START_LAMBDA:g} "
                         f"to the clean image), got {steps}.")
    t = [first]
    for i, target in enumerate(np.linspace(lam[first], lam[0], steps + 1)[1:-1], start=1):
        t.append(int(np.clip(np.argmin(np.abs(lam - target)), steps - 1 - i, t[-1] - 1)))  # each below the last
    return np.array(t, np.int32)


def _lambdas(schedule: NoiseSchedule) -> np.ndarray:
    return 0.5 * np.log(np.asarray(schedule.snr(), np.float64))  # lambda_t, falling with t


def _first_timestep(lam: np.ndarray) -> int:
    past = np.flatnonzero(lam <= START_LAMBDA)
    return int(past[0]) if past.size else len(lam) - 1


def step_pairs(timesteps, last=-1) -> np.ndarray:
    """(t, t_prev) per step: each of `timesteps` to the next, the last one to `last` (the clean image)."""
    t = np.asarray(timesteps)
    return np.stack([t, np.append(t[1:], last)], axis=1).astype(t.dtype)


# DDIM (Song et al. 2021): eq. 12, with sigma from eq. 16.
@struct.dataclass
class DDIMSampler:
    """Any number of steps on the time grid; eta = 0 is deterministic. DDPM (`every_timestep`, eta = 1) is
    Ho et al.'s algorithm 2 over all T timesteps: sigma^2 is then the DDPM posterior variance and the update
    samples p(x_{t-1} | x_t) = N(mu_tilde, beta_tilde I) (Ho et al. 2020, eqs. 6-7; Song et al. 2021, sec. 4.1)."""
    schedule: NoiseSchedule
    steps: int = struct.field(pytree_node=False, default=100)
    eta: float = 0.0
    every_timestep: bool = struct.field(pytree_node=False, default=False)

    def pairs(self) -> np.ndarray:  # the (t, t_prev) pairs this sampler steps over
        T = self.schedule.num_timesteps
        return step_pairs(np.arange(T - 1, -1, -1) if self.every_timestep else time_grid(self.schedule, self.steps))

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

    def pairs(self) -> np.ndarray:  # the time grid: evenly spaced in lambda, where the solver is accurate
        return step_pairs(time_grid(self.schedule, self.steps))

    def step(self, x_t, x0_hat, eps_hat, t, t_prev, noise, x0_before=None, t_before=None):
        """With h = lambda_prev - lambda_t and r = h_before / h:
        D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_before  (x0_hat alone on the first and last steps);
        ODE: x_prev = (sigma_prev / sigma_t) x_t + alpha_prev (1 - e^-h) D;
        SDE: x_prev = (sigma_prev / sigma_t) e^-h x_t + alpha_prev (1 - e^-2h) D + sigma_prev sqrt(1 - e^-2h) z."""
        ab_t, ab_prev = self.schedule.alpha_bar_at(t), self.schedule.alpha_bar_at(t_prev)
        alpha_prev, sigma_prev, sigma_t = jnp.sqrt(ab_prev), jnp.sqrt(1.0 - ab_prev), jnp.sqrt(1.0 - ab_t)
        lam = self.schedule.log_alpha_over_sigma
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
    """Euler, or Heun's second-order method, over the flow times of the time grid's noise levels, to t = 0."""
    schedule: NoiseSchedule
    steps: int = struct.field(pytree_node=False, default=50)
    heun: bool = struct.field(pytree_node=False, default=False)

    def pairs(self) -> np.ndarray:  # (t, t_next) per step, float32 flow times
        lam = self.schedule.log_alpha_over_sigma(time_grid(self.schedule, self.steps))
        return step_pairs(np.asarray(flow_time(lam), np.float32), last=0.0)


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


def starting_noise_level(sampler, first) -> float:
    """The noise's scale where the sampler starts: sigma = sqrt(1 - ab) at timestep `first`, or the flow time."""
    return float(first if isinstance(sampler, FlowSampler) else jnp.sqrt(1.0 - sampler.schedule.alpha_bar_at(first)))


def make_sampler(schedule: NoiseSchedule, sampler: str = "ddim", steps: int = 100, eta: float = 0.0,
                 objective: str | None = None):
    """`ddim` (eta in [0, 1]), `dpmpp_2m` or `dpmpp_2m_sde`, and for flow matching `euler` or `heun`, with
    `steps` on the time grid; `ddpm` (all T timesteps, eta = 1). With the run's `objective`, also that the
    sampler fits it. The one place sampler settings are checked."""
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}.")
    if objective is not None and (objective == "flow") != (sampler in FLOW_SAMPLERS):
        fits = FLOW_SAMPLERS if objective == "flow" else DDPM_SAMPLERS
        raise ValueError(f"Sampler {sampler!r} does not sample a {objective} run: choose one of {', '.join(fits)}.")
    if sampler == "ddpm":
        return DDIMSampler(schedule, schedule.num_timesteps, 1.0, every_timestep=True)
    time_grid(schedule, steps)  # checks steps
    if sampler in FLOW_SAMPLERS:
        return FlowSampler(schedule, int(steps), heun=sampler == "heun")
    if sampler == "ddim":
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1] (0: deterministic DDIM), got {eta}.")
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
            x_next, x0_hat = flow_step(lambda x, t: output(x, FLOW_TIME_SCALE * t), x, *t_pair, sampler.heun)
            return x_next, ((x_next, x0_hat) if trajectory else None)

        return jax.lax.scan(flow_body, x_T, pairs)
    schedule = sampler.schedule

    def body(carry, inputs):
        x, x0_before, t_before = carry  # the previous step's estimate, for multistep samplers
        (t, t_prev), k = inputs
        tb = jnp.full((x.shape[0],), t)
        x0_hat, eps_hat = to_x0_and_eps(prediction, output(x, t), x, schedule, tb)
        if clip_x0:  # keep x0_hat in the data range, then make eps_hat consistent with it
            x0_hat, eps_hat = to_x0_and_eps("x0", jnp.clip(x0_hat, -1.0, 1.0), x, schedule, tb)
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


def sample(model: nnx.Module, schedule: NoiseSchedule, key: jax.Array, num_samples: int, *,
           sampler: str = "ddim", steps: int = 100, eta: float = 0.0, prediction: str = "epsilon",
           clip_x0: bool = True, labels=None, guidance_scale: float | None = None,
           autoguidance: Autoguidance | None = None, return_trajectory: bool = False, batch_size: int = 500,
           x_T=None, objective: str | None = None):
    """Draw `num_samples` images in [-1, 1], (N, H, W, C), from `model` (pass the EMA model).

    With `autoguidance`, steps also run its guide (two network evaluations), every step or those in its
    interval. `x_T` gives the starting noise, N(0, I) (e.g. `slerp` between two seeds), scaled to the noise
    level of the sampler's first step; by default it is drawn from `key`. `return_trajectory=True` also
    returns (x_t after each step, x0_hat at each step), each (steps, N, H, W, C), and the (t, t_prev) pairs.
    Flow-matching samplers (`euler`, `heun`) take their time grid from `schedule` and ignore `prediction`,
    `eta` and `clip_x0`; `objective` (the run's) checks that the sampler fits it."""
    smp = make_sampler(schedule, sampler, steps, eta, objective)
    pairs = jnp.asarray(smp.pairs())
    cfg = model.cfg
    key_x, key_steps = jax.random.split(key)
    if x_T is None:
        x_T = jax.random.normal(key_x, (num_samples, cfg.image_size, cfg.image_size, cfg.in_channels))  # N(0, I)
    x_T = starting_noise_level(smp, pairs[0, 0]) * jnp.asarray(x_T)
    labels = None if labels is None else jnp.asarray(labels, jnp.int32)
    ag = autoguidance
    interval = None if ag is None or ag.interval is None else jnp.asarray(ag.interval, jnp.int32)
    as32 = lambda v: None if v is None else jnp.float32(v)  # noqa: E731
    model, guide = nnx.clone(model), None if ag is None else nnx.clone(ag.guide)
    # dropout off, on copies: the caller's models stay as they are
    for m in (model,) if guide is None else (model, guide):
        m.eval()
    outs = [_sample_scan(model, guide, smp, x_T[b], pairs, jax.random.fold_in(key_steps, i),
                         None if labels is None else labels[b], as32(guidance_scale),
                         None if ag is None else as32(ag.scale), interval, prediction, clip_x0, return_trajectory)
            for i, b in enumerate(slice(s, s + batch_size) for s in range(0, len(x_T), batch_size))]
    x = jnp.clip(jnp.concatenate([x for x, _ in outs]), -1.0, 1.0)
    if not return_trajectory:
        return x
    xs, x0s = (jnp.concatenate([tr[i] for _, tr in outs], axis=1) for i in (0, 1))
    return x, (xs, x0s, np.asarray(pairs))
