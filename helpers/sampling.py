"""Samplers: DDPM ancestral sampling and DDIM, both as one `lax.scan` under `jit`.

Both walk explicit (t, t_prev) pairs taken from the one `NoiseSchedule` the model was trained with;
t_prev = -1 means "the clean image" (alpha_bar = 1). Nothing computes `t - T // N`.
"""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from helpers.losses import to_x0_and_eps
from helpers.schedules import NoiseSchedule, _bcast


def ddpm_pairs(num_timesteps: int) -> np.ndarray:
    """(T, 2) pairs (T-1, T-2), ..., (0, -1): every step of the chain."""
    t = np.arange(num_timesteps - 1, -1, -1)
    return np.stack([t, t - 1], axis=1).astype(np.int32)


def ddim_pairs(num_timesteps: int, steps: int) -> np.ndarray:
    """(steps, 2) pairs over `steps` timesteps evenly spaced from T-1 down to 0, then to -1."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{num_timesteps}, got {steps}.")
    t = np.unique(np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(np.int32))[::-1]
    return np.stack([t, np.append(t[1:], -1)], axis=1).astype(np.int32)


@struct.dataclass
class DDPMSampler:
    """Ancestral sampling from p(x_{t-1} | x_t) = N(mu_tilde, beta_tilde I) (Ho et al. 2020, eqs. 6-7)."""

    schedule: NoiseSchedule

    def pairs(self) -> np.ndarray:
        """The (t, t_prev) pairs this sampler steps over, from T-1 down to (0, -1)."""
        return ddpm_pairs(self.schedule.num_timesteps)

    def step(self, x_t, x0_hat, eps_hat, t, t_prev, noise):
        """x_{t-1} = mu_tilde(x_t, x0_hat) + sqrt(beta_tilde_t) z, with no noise at the last step."""
        s = self.schedule
        ab_t, ab_prev = s.alpha_bar_at(t), s.alpha_bar_at(t_prev)
        beta_t = 1.0 - ab_t / ab_prev  # equals betas[t] for consecutive steps
        coef_x0 = jnp.sqrt(ab_prev) * beta_t / (1.0 - ab_t)
        coef_xt = jnp.sqrt(1.0 - beta_t) * (1.0 - ab_prev) / (1.0 - ab_t)
        var = (1.0 - ab_prev) / (1.0 - ab_t) * beta_t
        return coef_x0 * x0_hat + coef_xt * x_t + jnp.sqrt(var) * noise


@struct.dataclass
class DDIMSampler:
    """DDIM (Song et al. 2021): eq. 12 with sigma from eq. 16; eta = 0 is deterministic,
    eta = 1 with every step is the DDPM posterior."""

    schedule: NoiseSchedule
    steps: int = struct.field(pytree_node=False, default=100)
    eta: float = 0.0

    def pairs(self) -> np.ndarray:
        """The (t, t_prev) pairs this sampler steps over, from T-1 down to (0, -1)."""
        return ddim_pairs(self.schedule.num_timesteps, self.steps)

    def sigma(self, t, t_prev):
        """sigma_t(eta) = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev) (eq. 16)."""
        ab_t, ab_prev = self.schedule.alpha_bar_at(t), self.schedule.alpha_bar_at(t_prev)
        return self.eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))

    def step(self, x_t, x0_hat, eps_hat, t, t_prev, noise):
        """x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z (eq. 12)."""
        ab_prev = self.schedule.alpha_bar_at(t_prev)
        sigma = self.sigma(t, t_prev)
        direction = jnp.sqrt(jnp.clip(1.0 - ab_prev - sigma**2, 0.0, None)) * eps_hat
        return jnp.sqrt(ab_prev) * x0_hat + direction + sigma * noise


def make_sampler(schedule: NoiseSchedule, sampler: str = "ddim", steps: int = 100, eta: float = 0.0):
    """`ddim` (any number of steps, eta in [0, 1]) or `ddpm` (all T steps)."""
    if sampler == "ddpm":
        return DDPMSampler(schedule)
    if sampler == "ddim":
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}.")
        ddim_pairs(schedule.num_timesteps, steps)  # validates steps
        return DDIMSampler(schedule, int(steps), float(eta))
    raise ValueError(f"Unknown sampler {sampler!r}: choose ddim or ddpm.")


def model_output(model, x, t, labels=None, guidance_scale: float | None = None):
    """The network output at (x, t); with labels and a guidance scale w, classifier-free guidance
    out = out_uncond + w (out_cond - out_uncond) (Ho & Salimans 2022)."""
    tt = jnp.full((x.shape[0],), t)
    if labels is None or guidance_scale is None:
        return model(x, tt, labels)
    null = jnp.full_like(labels, model.cfg.num_classes)
    both = model(jnp.concatenate([x, x]), jnp.concatenate([tt, tt]), jnp.concatenate([labels, null]))
    cond, uncond = jnp.split(both, 2)
    return uncond + guidance_scale * (cond - uncond)


def autoguided_output(model, guide, x, t, labels=None, guidance_scale=None, autoguidance_scale=None):
    """Autoguidance (Karras et al. 2024, eq. 2): out = out_guide + w (out_model - out_guide), where the
    guide is a weaker version of the same model (here: its EMA weights early in training). It pushes
    samples away from what the weak model gets wrong, towards the typical images of the data."""
    out = model_output(model, x, t, labels, guidance_scale)
    if guide is None or autoguidance_scale is None:
        return out
    weak = model_output(guide, x, t, labels, guidance_scale)
    return weak + autoguidance_scale * (out - weak)


@functools.partial(jax.jit, static_argnames=("graphdef", "guide_graphdef", "prediction", "clip_x0", "trajectory"))
def _sample_scan(graphdef, state, guide_graphdef, guide_state, sampler, x_T, pairs, key, labels, guidance_scale,
                 autoguidance_scale, prediction, clip_x0, trajectory):
    model = nnx.merge(graphdef, state)
    guide = None if guide_graphdef is None else nnx.merge(guide_graphdef, guide_state)
    schedule = sampler.schedule
    keys = jax.random.split(key, pairs.shape[0])

    def body(x, inputs):
        (t, t_prev), k = inputs
        out = autoguided_output(model, guide, x, t, labels, guidance_scale, autoguidance_scale)
        tb = jnp.full((x.shape[0],), t)
        x0_hat, eps_hat = to_x0_and_eps(prediction, out, x, schedule, tb)
        if clip_x0:  # keep x0 in the data range, then make eps consistent with it
            x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
            ab = _bcast(schedule.alpha_bar_at(tb), x)
            eps_hat = (x - jnp.sqrt(ab) * x0_hat) / jnp.sqrt(1.0 - ab)
        x_prev = sampler.step(x, x0_hat, eps_hat, t, t_prev, jax.random.normal(k, x.shape, x.dtype))
        return x_prev, ((x_prev, x0_hat) if trajectory else None)

    return jax.lax.scan(body, x_T, (pairs, keys))


def sample(model: nnx.Module, schedule: NoiseSchedule, key: jax.Array, num_samples: int, *,
           sampler: str = "ddim", steps: int = 100, eta: float = 0.0, prediction: str = "epsilon",
           clip_x0: bool = True, labels=None, guidance_scale: float | None = None,
           guide: nnx.Module | None = None, autoguidance_scale: float | None = None,
           return_trajectory: bool = False, batch_size: int = 500, image_shape=None, x_T=None):
    """Draw `num_samples` images in [-1, 1], (N, H, W, C), from `model` (pass the EMA model to use
    EMA weights, as `scripts/` and the notebooks do).

    With a `guide` model (a weaker version of `model`) and `autoguidance_scale` w > 1, every step
    uses autoguidance (`autoguided_output`); each step then costs two network evaluations.

    `x_T` gives the starting noise yourself (e.g. `slerp` between two seeds); by default it is
    drawn from `key`. With `return_trajectory=True` also returns (x_t after each step, x0_hat at each step), each of
    shape (steps, N, H, W, C), and the (t, t_prev) pairs.
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}.")
    smp = make_sampler(schedule, sampler, steps, eta)
    pairs = jnp.asarray(smp.pairs())
    eval_model = nnx.clone(model)
    eval_model.eval()
    graphdef, state = nnx.split(eval_model)
    guide_graphdef = guide_state = None
    if guide is not None and autoguidance_scale is not None:
        eval_guide = nnx.clone(guide)
        eval_guide.eval()
        guide_graphdef, guide_state = nnx.split(eval_guide)
        autoguidance_scale = jnp.float32(autoguidance_scale)
    else:
        autoguidance_scale = None
    cfg = getattr(model, "cfg", None)
    shape = tuple(image_shape or (cfg.image_size, cfg.image_size, cfg.in_channels))
    key_x, key_steps = jax.random.split(key)
    if x_T is None:
        x_T = jax.random.normal(key_x, (num_samples, *shape), jnp.float32)  # x_T ~ N(0, I)
    elif x_T.shape != (num_samples, *shape):
        raise ValueError(f"x_T has shape {x_T.shape}, expected {(num_samples, *shape)}.")
    if labels is not None:
        labels = jnp.asarray(labels, jnp.int32)
    outs, trajs = [], []
    for i, start in enumerate(range(0, num_samples, batch_size)):
        sl = slice(start, start + batch_size)
        x, traj = _sample_scan(graphdef, state, guide_graphdef, guide_state, smp, x_T[sl], pairs,
                               jax.random.fold_in(key_steps, i), None if labels is None else labels[sl],
                               None if guidance_scale is None else jnp.float32(guidance_scale),
                               autoguidance_scale, prediction, clip_x0, return_trajectory)
        outs.append(x)
        trajs.append(traj)
    x = jnp.clip(jnp.concatenate(outs), -1.0, 1.0)
    if not return_trajectory:
        return x
    xs = jnp.concatenate([t[0] for t in trajs], axis=1)
    x0s = jnp.concatenate([t[1] for t in trajs], axis=1)
    return x, (xs, x0s, np.asarray(pairs))


def slerp(z0: jax.Array, z1: jax.Array, alphas) -> jax.Array:
    """Spherical interpolation between two noise tensors (Shoemake 1985), one result per alpha.

    Gaussian noise in many dimensions lies near a sphere of radius sqrt(dim); a straight line
    between two draws dips inside it (the midpoint has ~71% of the norm) and looks like too little
    noise to the model, while slerp stays on the sphere.
    """
    a, b = z0.reshape(-1), z1.reshape(-1)
    omega = jnp.arccos(jnp.clip(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)), -1.0, 1.0))
    alphas = jnp.asarray(alphas, jnp.float32)[:, None]
    out = (jnp.sin((1 - alphas) * omega) * a + jnp.sin(alphas * omega) * b) / jnp.sin(omega)
    return out.reshape((-1, *z0.shape))
