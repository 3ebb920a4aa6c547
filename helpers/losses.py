"""Diffusion training objectives: what the network predicts, how the error is measured and weighted.

With x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (ab = alpha_bar_t), the network predicts one of
  epsilon: eps                                  (Ho et al. 2020)
  v:       v = sqrt(ab) eps - sqrt(1 - ab) x0   (Salimans & Ho 2022, sec. 4)
  x0:      x0
and `to_x0_and_eps` inverts each one, so every sampler works with every target."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from helpers.schedules import NoiseSchedule, per_image

PREDICTIONS = ("epsilon", "v", "x0")
LOSSES = ("mse", "huber")
WEIGHTINGS = ("uniform", "min_snr")


# Uniform timesteps (Ho et al. 2020, algorithm 1, line 3).
def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int) -> jax.Array:
    """t ~ U{0, ..., T-1}, shape (B,)."""
    return jax.random.randint(key, (batch_size,), 0, num_timesteps)


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
