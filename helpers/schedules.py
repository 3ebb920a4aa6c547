"""Noise schedules: one `NoiseSchedule` shared by training and every sampler.

Timesteps are integers t = 0 .. T-1. `alpha_bar[t]` is the product of alphas up to and including t,
so x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar[t]) x_0, (1 - alpha_bar[t]) I)   (Ho et al. 2020, eq. 4).
"Before the first step" (t = -1, the clean image) has alpha_bar = 1; samplers use `alpha_bar_at(-1)`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SCHEDULES = ("linear", "cosine")


@struct.dataclass
class NoiseSchedule:
    """betas, alphas = 1 - betas, alpha_bar = cumprod(alphas), all float32 of shape (T,). A pytree."""

    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array
    kind: str = struct.field(pytree_node=False, default="linear")

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas, kind: str) -> "NoiseSchedule":
        """A schedule from its betas; the cumulative product is taken in float64."""
        betas64 = np.asarray(betas, dtype=np.float64)
        alphas64 = 1.0 - betas64
        alpha_bars64 = np.cumprod(alphas64)  # computed in float64, stored in float32
        as32 = lambda a: jnp.asarray(a, dtype=jnp.float32)  # noqa: E731
        return cls(as32(betas64), as32(alphas64), as32(alpha_bars64), kind=kind)

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """Linear betas from beta_start to beta_end (Ho et al. 2020, section 4)."""
        _check(num_timesteps)
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"Need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}.")
        return cls.from_betas(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64), "linear")

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = f(t) / f(0),
        f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), betas = 1 - alpha_bar(t+1) / alpha_bar(t)
        clipped at `max_beta` = 0.999 so that alpha_bar never reaches 0 at t = T - 1."""
        _check(num_timesteps)
        steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        betas = np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)
        return cls.from_betas(betas, "cosine")

    @classmethod
    def create(cls, kind: str = "cosine", num_timesteps: int = 1000,
               beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """By name. `beta_start` / `beta_end` only apply to the linear schedule (cosine has none)."""
        if kind == "linear":
            return cls.linear(num_timesteps, beta_start, beta_end)
        if kind == "cosine":
            return cls.cosine(num_timesteps)
        raise ValueError(f"Unknown noise schedule {kind!r}: choose one of {', '.join(SCHEDULES)}.")

    # ------------------------------------------------------------------ derived quantities
    def alpha_bar_at(self, t) -> jax.Array:
        """alpha_bar[t], with alpha_bar[-1] = 1 (no noise) for the last step of a sampler."""
        t = jnp.asarray(t)
        return jnp.where(t >= 0, self.alpha_bars[jnp.clip(t, 0, None)], 1.0)

    def snr(self, t=None) -> jax.Array:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) (Kingma et al. 2021)."""
        ab = self.alpha_bars if t is None else self.alpha_bar_at(t)
        return ab / (1.0 - ab)

    def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, eq. 4). t: (B,)."""
        ab = _bcast(self.alpha_bar_at(t), x0)
        return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise

    def posterior_variance(self, t) -> jax.Array:
        """beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t (Ho et al. 2020, eq. 7)."""
        t = jnp.asarray(t)
        return (1.0 - self.alpha_bar_at(t - 1)) / (1.0 - self.alpha_bar_at(t)) * self.betas[t]


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    """(B,) -> (B, 1, 1, 1) for NHWC broadcasting."""
    return jnp.reshape(v, v.shape + (1,) * (like.ndim - v.ndim))


def _check(num_timesteps: int) -> None:
    if int(num_timesteps) < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}.")
