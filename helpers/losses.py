"""Diffusion training objectives: what the network predicts, how the error is measured and weighted.

Prediction targets, with x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (ab = alpha_bar_t):
  epsilon: eps                                       (Ho et al. 2020)
  v:       v = sqrt(ab) eps - sqrt(1 - ab) x0        (Salimans & Ho 2022, eq. in sec. 4)
  x0:      x0
`to_x0_and_eps` inverts each one, so every sampler works with every target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from helpers.schedules import NoiseSchedule, _bcast

PREDICTIONS = ("epsilon", "v", "x0")
LOSSES = ("mse", "huber")
WEIGHTINGS = ("uniform", "min_snr")


def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int) -> jax.Array:
    """Uniform timesteps t ~ U{0, ..., T-1} (Ho et al. 2020, algorithm 1)."""
    return jax.random.randint(key, (batch_size,), 0, num_timesteps)


def prediction_target(prediction: str, x0, noise, schedule: NoiseSchedule, t) -> jax.Array:
    """The tensor the network is trained to output for `prediction` in epsilon | v | x0."""
    if prediction == "epsilon":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        ab = _bcast(schedule.alpha_bar_at(t), x0)
        return jnp.sqrt(ab) * noise - jnp.sqrt(1.0 - ab) * x0
    raise ValueError(f"Unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}.")


def to_x0_and_eps(prediction: str, model_out, x_t, schedule: NoiseSchedule, t):
    """Turn a network output into (x0_hat, eps_hat) for the samplers.

    epsilon: x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)       (Ho et al. 2020, eq. 15)
    v:       x0 = sqrt(ab) x_t - sqrt(1 - ab) v,  eps = sqrt(1 - ab) x_t + sqrt(ab) v
    x0:      eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
    """
    ab = _bcast(schedule.alpha_bar_at(t), x_t)
    sa, s1a = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
    if prediction == "epsilon":
        return (x_t - s1a * model_out) / sa, model_out
    if prediction == "v":
        return sa * x_t - s1a * model_out, s1a * x_t + sa * model_out
    if prediction == "x0":
        return model_out, (x_t - sa * model_out) / s1a
    raise ValueError(f"Unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}.")


def per_example_loss(loss: str, pred, target, huber_delta: float = 1.0) -> jax.Array:
    """Mean over H, W, C of the squared error (mse) or Huber loss (delta = 1 by default). (B,...) -> (B,)."""
    if loss == "mse":
        err = jnp.square(pred - target)
    elif loss == "huber":
        err = optax.huber_loss(pred, target, delta=huber_delta)
    else:
        raise ValueError(f"Unknown loss {loss!r}: choose one of {', '.join(LOSSES)}.")
    return jnp.mean(err, axis=tuple(range(1, err.ndim)))


def loss_weights(weighting: str, prediction: str, schedule: NoiseSchedule, t, gamma: float = 5.0):
    """Per-timestep weights. min_snr (Hang et al. 2023): weight on the x0 error is min(SNR, gamma),
    which for the other targets becomes min(SNR, gamma) / SNR (epsilon) and min(SNR, gamma) / (SNR + 1) (v)."""
    if weighting == "uniform":
        return jnp.ones(jnp.shape(t), jnp.float32)
    if weighting != "min_snr":
        raise ValueError(f"Unknown loss weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}.")
    snr = schedule.snr(t)
    clipped = jnp.minimum(snr, gamma)
    if prediction == "epsilon":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1.0)
    if prediction == "x0":
        return clipped
    raise ValueError(f"Unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}.")


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean over the examples whose mask is 1 (padded examples of a short last batch have mask 0)."""
    if mask is None:
        return jnp.mean(values)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def denoising_error(model, schedule: NoiseSchedule, prediction: str, x0, key: jax.Array,
                    batch_size: int = 500) -> float:
    """Held-out noise-prediction MSE, E ||eps_hat(x_t, t) - eps||^2 over uniform t, whatever the target.

    Training losses are not comparable across targets (epsilon / v / x0), losses (MSE / Huber) or
    weightings; this is: every model's output is turned into eps_hat with `to_x0_and_eps`.
    """
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def batch_error(state, x0, key):
        m = nnx.merge(graphdef, state)
        t_key, n_key = jax.random.split(key)
        t = sample_timesteps(t_key, x0.shape[0], schedule.num_timesteps)
        noise = jax.random.normal(n_key, x0.shape, x0.dtype)
        x_t = schedule.q_sample(x0, t, noise)
        _, eps_hat = to_x0_and_eps(prediction, m(x_t, t), x_t, schedule, t)
        return jnp.sum(jnp.mean(jnp.square(eps_hat - noise), axis=(1, 2, 3)))

    total = 0.0
    for i in range(0, len(x0), batch_size):
        total += float(batch_error(state, jnp.asarray(x0[i:i + batch_size]), jax.random.fold_in(key, i)))
    return total / len(x0)
