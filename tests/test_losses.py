import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.losses import (log_normal_timesteps, loss_weights, masked_mean, per_example_loss, prediction_target,
                            sample_timesteps, to_x0_and_eps)
from helpers.schedules import NoiseSchedule


def test_mse_and_huber_hand_computed():
    pred = jnp.array([[0.0, 0.5, 3.0, -2.0]]).reshape(1, 2, 2, 1)
    target = jnp.zeros_like(pred)
    # mse: (0 + .25 + 9 + 4) / 4
    assert float(per_example_loss("mse", pred, target)[0]) == pytest.approx(13.25 / 4)
    # huber (delta 1): .5 x^2 for |x| <= 1, |x| - .5 otherwise: (0 + .125 + 2.5 + 1.5) / 4
    assert float(per_example_loss("huber", pred, target)[0]) == pytest.approx(4.125 / 4)
    # delta 2: (0 + .125 + 2*(3-1) + .5*4) / 4
    assert float(per_example_loss("huber", pred, target, 2.0)[0]) == pytest.approx(6.125 / 4)
    with pytest.raises(ValueError, match="choose one of"):
        per_example_loss("l1", pred, target)


def test_targets_and_inversion_roundtrip():
    s = NoiseSchedule.cosine(1000)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(k1, (4, 8, 8, 1), minval=-1, maxval=1)
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.array([0, 100, 500, 900])
    xt = s.q_sample(x0, t, eps)
    ab = np.asarray(s.alpha_bars[t]).reshape(4, 1, 1, 1)
    v = prediction_target("v", x0, eps, s, t)
    np.testing.assert_allclose(v, np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0, rtol=1e-5, atol=1e-6)
    assert prediction_target("epsilon", x0, eps, s, t) is eps
    assert prediction_target("x0", x0, eps, s, t) is x0
    for kind in ("epsilon", "v", "x0"):
        out = prediction_target(kind, x0, eps, s, t)
        x0_hat, eps_hat = to_x0_and_eps(kind, out, xt, s, t)
        np.testing.assert_allclose(x0_hat[:3], x0[:3], atol=2e-3)  # t=900 amplifies float error for eps
        np.testing.assert_allclose(eps_hat[1:], eps[1:], atol=2e-3)  # t=0: eps from x0 divides by ~0


def test_min_snr_weights():
    s = NoiseSchedule.cosine(1000)
    t = jnp.array([1, 300, 999])
    snr = np.asarray(s.snr(t))
    np.testing.assert_allclose(loss_weights("uniform", "epsilon", s, t), 1.0)
    np.testing.assert_allclose(loss_weights("min_snr", "epsilon", s, t), np.minimum(snr, 5) / snr, rtol=1e-5)
    np.testing.assert_allclose(loss_weights("min_snr", "v", s, t), np.minimum(snr, 5) / (snr + 1), rtol=1e-5)
    np.testing.assert_allclose(loss_weights("min_snr", "x0", s, t), np.minimum(snr, 5), rtol=1e-5)
    w = np.asarray(loss_weights("min_snr", "epsilon", s, t))
    assert w[0] < 0.01 and w[-1] == pytest.approx(1.0)  # high SNR (small t) down-weighted, low SNR weight 1


def test_masked_mean_ignores_padding():
    vals = jnp.array([1.0, 2.0, 3.0, 100.0])
    assert float(masked_mean(vals, jnp.array([1.0, 1.0, 1.0, 0.0]))) == pytest.approx(2.0)
    assert float(masked_mean(vals, jnp.ones(4))) == pytest.approx(26.5)


def test_uniform_timesteps_cover_range():
    t = np.asarray(sample_timesteps(jax.random.key(0), 100_000, 10))
    assert t.min() == 0 and t.max() == 9
    np.testing.assert_allclose(np.bincount(t) / len(t), 0.1, atol=0.01)


def test_log_normal_timesteps_follow_edms_noise_levels():
    """EDM's ln sigma ~ N(-1.2, 1.2^2) on the cosine schedule's timesteps: the nearest sigma_t to each draw."""
    schedule = NoiseSchedule.create("cosine", 1000)
    t = log_normal_timesteps(jax.random.key(0), 100_000, schedule)
    log_sigma = -np.asarray(schedule.log_alpha_over_sigma(t))
    assert abs(log_sigma.mean() + 1.2) < 0.02 and abs(log_sigma.std() - 1.2) < 0.02
    assert t.min() >= 0 and t.max() <= 999 and 150 < np.median(np.asarray(t)) < 350  # sigma = 0.3: mid-low noise
