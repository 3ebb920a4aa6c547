"""Noise schedules: one `NoiseSchedule` shared by training and every sampler.

Timesteps are integers t = 0 .. T-1. `alpha_bars[t]` is the product of alphas up to and including t,
so x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)   (Ho et al. 2020, eq. 4).
"Before the first step" (t = -1, the clean image) has alpha_bar = 1; samplers use `alpha_bar_at(-1)`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SCHEDULES = ("linear", "cosine")


def check_schedule(kind: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
    """Raise ValueError saying what to change when these cannot make a schedule (the one place they are checked)."""
    if kind not in SCHEDULES:
        raise ValueError(f"Unknown schedule {kind!r}: choose one of {', '.join(SCHEDULES)}.")
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}.")
    if kind == "linear" and not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"Need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}.")


@struct.dataclass
class NoiseSchedule:
    """betas, alphas = 1 - betas, alpha_bars = cumprod(alphas), all float32 of shape (T,). A pytree."""
    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array
    kind: str = struct.field(pytree_node=False, default="linear")

    @property
    def num_timesteps(self) -> int:  # T, the number of diffusion steps
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas, kind: str) -> "NoiseSchedule":
        """A schedule from its betas; the cumulative product is taken in float64, stored in float32."""
        betas = np.asarray(betas, dtype=np.float64)
        check_schedule(kind, len(betas))
        return cls(*(jnp.asarray(a, jnp.float32) for a in (betas, 1.0 - betas, np.cumprod(1.0 - betas))), kind=kind)

    # Linear betas (Ho et al. 2020, sec. 4).
    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """Betas evenly spaced from beta_start to beta_end."""
        check_schedule("linear", num_timesteps, beta_start, beta_end)
        return cls.from_betas(np.linspace(beta_start, beta_end, num_timesteps), "linear")

    # Cosine schedule (Nichol & Dhariwal 2021, eq. 17).
    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        """alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2); betas are
        clipped at `max_beta` so that alpha_bar never reaches 0 at t = T - 1."""
        f = np.cos((np.linspace(0.0, 1.0, num_timesteps + 1) + s) / (1 + s) * math.pi / 2) ** 2  # at t / T
        alpha_bar = f / f[0]
        return cls.from_betas(np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta), "cosine")

    @classmethod
    def create(cls, kind: str = "cosine", num_timesteps: int = 1000,
               beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """By name. `beta_start` / `beta_end` apply to the linear schedule only."""
        check_schedule(kind, num_timesteps, beta_start, beta_end)
        return cls.linear(num_timesteps, beta_start, beta_end) if kind == "linear" else cls.cosine(num_timesteps)

    def alpha_bar_at(self, t) -> jax.Array:
        """alpha_bar_t, with alpha_bar_{-1} = 1 (no noise) for the last step of a sampler."""
        t = jnp.asarray(t)
        return jnp.where(t >= 0, self.alpha_bars[jnp.clip(t, 0, None)], 1.0)

    # Signal-to-noise ratio (Kingma et al. 2021, eq. 2).
    def snr(self, t=None) -> jax.Array:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t), at every t when `t` is None."""
        ab = self.alpha_bars if t is None else self.alpha_bar_at(t)
        return ab / (1.0 - ab)

    def log_alpha_over_sigma(self, t=None) -> jax.Array:
        """lambda_t = log(alpha_t / sigma_t) = log(SNR_t) / 2, at every t when `t` is None; +inf at t = -1."""
        return 0.5 * jnp.log(self.snr(t))

    # The forward process in closed form (Ho et al. 2020, eq. 4).
    def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, for timesteps t of shape (B,)."""
        ab = per_image(self.alpha_bar_at(t), x0)
        return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def per_image(values: jax.Array, like: jax.Array) -> jax.Array:
    """(B,) -> (B, 1, 1, 1): one value per image, broadcast over an NHWC batch."""
    return jnp.reshape(values, values.shape + (1,) * (like.ndim - values.ndim))
