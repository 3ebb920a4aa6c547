"""Diffusion training objectives: what the network predicts, how the error is measured and weighted.

With x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (ab = alpha_bar_t), the network predicts one of
  epsilon: eps                                  (Ho et al. 2020)
  v:       v = sqrt(ab) eps - sqrt(1 - ab) x0   (Salimans & Ho 2022, sec. 4)
  x0:      x0
and `to_x0_and_eps` inverts each one, so every sampler works with every target.

Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023) takes the straight path
x_t = (1 - t) x0 + t eps with t in [0, 1] (t = 0: data, t = 1: noise) and the network predicts its velocity
dx_t/dt = eps - x0. It is DDPM's x_t with alpha = 1 - t and sigma = t, up to the scale sqrt(alpha^2 + sigma^2):
the same SNR = ((1 - t) / t)^2 is DDPM's alpha_bar / (1 - alpha_bar)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from helpers.schedules import NoiseSchedule, per_image

PREDICTIONS = ("epsilon", "v", "x0")
FLOW_TIMES = ("uniform", "logit_normal")
NOISE_LEVELS = ("uniform", "log_normal")
#: The network sees flow time t in [0, 1] as 1000 t: the range of DDPM's timesteps, for the same embedding.
FLOW_TIME_SCALE = 1000.0
LOSSES = ("mse", "huber")


def flow_time(log_alpha_over_sigma):
    """The flow time of equal signal-to-noise ratio: alpha / sigma = (1 - t) / t, so t = sigmoid(-lambda)."""
    return 1.0 / (1.0 + np.exp(np.asarray(log_alpha_over_sigma, np.float64)))
WEIGHTINGS = ("uniform", "min_snr")


# Uniform timesteps (Ho et al. 2020, algorithm 1, line 3).
def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int) -> jax.Array:
    """t ~ U{0, ..., T-1}, shape (B,)."""
    return jax.random.randint(key, (batch_size,), 0, num_timesteps)


# EDM's training noise levels (Karras et al. 2022, table 1): ln sigma ~ N(-1.2, 1.2^2), sigma = sqrt((1 - ab) / ab).
def log_normal_timesteps(key: jax.Array, batch_size: int, schedule: NoiseSchedule, mean: float = -1.2,
                         std: float = 1.2) -> jax.Array:
    """The timestep whose noise level sigma_t is nearest (in log) to sigma, ln sigma ~ N(mean, std^2); shape (B,)."""
    log_sigmas = -schedule.log_alpha_over_sigma()  # ln sigma_t, increasing in t
    want = mean + std * jax.random.normal(key, (batch_size,))
    above = jnp.clip(jnp.searchsorted(log_sigmas, want), 1, schedule.num_timesteps - 1)
    nearer_below = want - log_sigmas[above - 1] < log_sigmas[above] - want
    return jnp.where(nearer_below, above - 1, above)


# Flow-matching times: uniform, or logit-normal (Esser et al. 2024, sec. 3.1: more weight mid-path).
def flow_times(key: jax.Array, batch_size: int, kind: str = "logit_normal") -> jax.Array:
    """t ~ U(0, 1), or t = sigmoid(n) with n ~ N(0, 1); shape (B,)."""
    if kind == "uniform":
        return jax.random.uniform(key, (batch_size,))
    return jax.nn.sigmoid(jax.random.normal(key, (batch_size,)))


# The straight conditional path (Lipman et al. 2023, sec. 4.1, sigma_min = 0; their t runs the other way).
def flow_matching_pair(x0, noise, t):
    """(x_t, velocity): x_t = (1 - t) x0 + t eps on the straight path, and its velocity eps - x0."""
    s = per_image(t, x0)
    return (1.0 - s) * x0 + s * noise, noise - x0


def prediction_target(prediction: str, x0, noise, schedule: NoiseSchedule, t) -> jax.Array:
    """The tensor the network is trained to output for `prediction` in epsilon | v | x0."""
    if prediction == "epsilon":
        return noise
    if prediction == "x0":
        return x0
    ab = per_image(schedule.alpha_bar_at(t), x0)
    return jnp.sqrt(ab) * noise - jnp.sqrt(1.0 - ab) * x0  # v


def to_x0_and_eps(prediction: str, model_out, x_t, schedule: NoiseSchedule, t):
    """A network output as (x0_hat, eps_hat), the two quantities every sampler needs.

    epsilon: x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)       (Ho et al. 2020, eq. 15)
    v:       x0 = sqrt(ab) x_t - sqrt(1 - ab) v,  eps = sqrt(1 - ab) x_t + sqrt(ab) v
    x0:      eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)"""
    ab = per_image(schedule.alpha_bar_at(t), x_t)
    signal, noise = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
    if prediction == "epsilon":
        return (x_t - noise * model_out) / signal, model_out
    if prediction == "v":
        return signal * x_t - noise * model_out, noise * x_t + signal * model_out
    return model_out, (x_t - signal * model_out) / noise  # x0


def per_example_loss(loss: str, pred, target, huber_delta: float = 1.0) -> jax.Array:
    """Mean over H, W, C of the squared error (mse) or the Huber loss. (B, ...) -> (B,)."""
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}: choose one of {', '.join(LOSSES)}.")
    err = jnp.square(pred - target) if loss == "mse" else optax.huber_loss(pred, target, delta=huber_delta)
    return jnp.mean(err, axis=tuple(range(1, err.ndim)))


# Min-SNR-gamma weighting (Hang et al. 2023, eq. 9 and sec. 3.4).
def loss_weights(weighting: str, prediction: str, schedule: NoiseSchedule, t, gamma: float = 5.0):
    """Per-example weights: 1 (uniform), or min(SNR, gamma) on the x0 error (min_snr), which is
    min(SNR, gamma) / SNR on the epsilon error and min(SNR, gamma) / (SNR + 1) on the v error."""
    if weighting == "uniform":
        return jnp.ones(jnp.shape(t), jnp.float32)
    snr = schedule.snr(t)
    clipped = jnp.minimum(snr, gamma)
    return {"epsilon": clipped / snr, "v": clipped / (snr + 1.0), "x0": clipped}[prediction]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the examples whose mask is 1 (the padding of an epoch's short last batch has mask 0)."""
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)
