"""Flow matching against the closed-form optimal velocity for Gaussian data x0 ~ N(0, s^2 I).

On the straight path x_t = (1 - t) x0 + t eps, Var(x_t) = (1 - t)^2 s^2 + t^2 and the best velocity is
v*(x_t, t) = E[eps - x0 | x_t] = (t - (1 - t) s^2) / Var(x_t) * x_t. Its ODE dx/dt = v* carries x_1 = eps to
x_0 = s x_1 exactly, so a sampler's error is measurable, and the loss has its minimum at v*."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers.config import get_config
from helpers.losses import FLOW_TIME_SCALE, flow_matching_pair, flow_times, per_example_loss
from helpers.sampling import Autoguidance, make_sampler, network_evaluations, sample
from helpers.schedules import NoiseSchedule, per_image
from helpers.unet import UNetConfig

S = 0.3  # the data's standard deviation; small enough that the final clip to [-1, 1] changes nothing
GRID = NoiseSchedule.cosine(1000)  # the time grid's noise levels: the DDPM runs' schedule


def optimal_velocity(x_t, t, s=S):
    """E[eps - x0 | x_t] for x0 ~ N(0, s^2), t broadcast against x_t."""
    return (t - (1 - t) * s**2) / ((1 - t) ** 2 * s**2 + t**2) * x_t


class GaussianVelocity(nnx.Module):
    """A stand-in network: the optimal velocity, scaled by `scale`, at the time FLOW_TIME_SCALE t it is given."""

    def __init__(self, scale=1.0):
        self.cfg = UNetConfig(image_size=8, num_classes=None)
        self.scale = scale

    def __call__(self, x, t, labels=None):
        return self.scale * optimal_velocity(x, per_image(t / FLOW_TIME_SCALE, x))


def _flow_samples(sampler, steps, n=2000, **kwargs):
    x_1 = jax.random.normal(jax.random.key(0), (n, 8, 8, 1))
    x = sample(GaussianVelocity(), GRID, jax.random.key(1), n, sampler=sampler, steps=steps, x_T=x_1, **kwargs)
    return np.asarray(x), np.asarray(x_1)


@pytest.mark.parametrize("sampler,steps", [("euler", 500), ("heun", 50)])
def test_flow_samplers_carry_noise_to_the_data_variance(sampler, steps):
    x, _ = _flow_samples(sampler, steps)
    assert abs(x.mean()) < 0.01
    assert x.var() == pytest.approx(S**2, rel=0.02)


def test_heun_is_more_accurate_than_euler_at_ten_steps():
    """Each sample's distance to the exact x_0 = s x_1: Heun's second-order error is below Euler's."""
    error = {}
    for name in ("euler", "heun"):
        x, x_1 = _flow_samples(name, 10)
        error[name] = float(np.abs(x - S * x_1).mean())
    assert error["heun"] < 0.5 * error["euler"], error


def test_the_optimal_velocity_minimises_the_flow_matching_loss():
    """The loss of v* is below that of v* scaled up or down or shifted, and equals the theory's minimum."""
    k = jax.random.split(jax.random.key(2), 3)
    x0 = S * jax.random.normal(k[0], (4096, 8, 8, 1))
    t = flow_times(k[2], 4096, "uniform")
    x_t, target = flow_matching_pair(x0, jax.random.normal(k[1], x0.shape), t)
    v_star = optimal_velocity(x_t, per_image(t, x_t))

    def loss(v):
        return float(per_example_loss("mse", v, target).mean())

    best = loss(v_star)
    for perturbed in (0.9 * v_star, 1.1 * v_star, v_star + 0.1 * x_t, v_star - 0.1 * x_t):
        assert best < loss(perturbed)
    # the minimum is E_t Var(eps - x0 | x_t) = E_t [1 + s^2 - Cov(eps - x0, x_t)^2 / Var(x_t)]
    cov, var = t - (1 - t) * S**2, (1 - t) ** 2 * S**2 + t**2
    assert best == pytest.approx(float(jnp.mean(1 + S**2 - cov**2 / var)), rel=0.01)


def test_flow_times_are_in_the_unit_interval_and_logit_normal_favours_the_middle():
    key = jax.random.key(3)
    uniform, logit_normal = (np.asarray(flow_times(key, 100_000, kind)) for kind in ("uniform", "logit_normal"))
    assert uniform.min() >= 0 and uniform.max() <= 1 and logit_normal.min() > 0 and logit_normal.max() < 1
    middle = lambda t: np.mean((t > 0.25) & (t < 0.75))  # noqa: E731
    assert middle(uniform) == pytest.approx(0.5, abs=0.01) and middle(logit_normal) > 0.65


def test_network_evaluations_of_euler_and_heun():
    """Euler: one evaluation per step; Heun: two, except on its last (an Euler step to t = 0)."""
    assert network_evaluations(make_sampler(GRID, "euler", 10)) == 10
    assert network_evaluations(make_sampler(GRID, "heun", 10)) == 19
    assert network_evaluations(make_sampler(GRID, "heun", 10), guided=True) == 38
    pairs = make_sampler(GRID, "heun", 4).pairs()
    assert 0.99 < pairs[0, 0] < 0.995 and pairs[-1, 1] == 0  # from lambda = -4.8 to the data
    np.testing.assert_array_equal(pairs[1:, 0], pairs[:-1, 1])
    assert np.all(np.diff(pairs[:, 0]) < 0)


def test_autoguidance_of_a_flow_sampler():
    """A guide equal to the model changes nothing; a weaker guide moves the samples away from it."""
    plain, _ = _flow_samples("heun", 5, n=8)
    same, _ = _flow_samples("heun", 5, n=8, autoguidance=Autoguidance(GaussianVelocity(), 2.0))
    weak, _ = _flow_samples("heun", 5, n=8, autoguidance=Autoguidance(GaussianVelocity(0.5), 2.0))
    np.testing.assert_allclose(same, plain, atol=1e-6)
    assert not np.allclose(weak, plain, atol=1e-3)


@pytest.mark.parametrize("overrides,message", [
    (dict(objective="flow", prediction="epsilon"), "--prediction v"),
    (dict(objective="flow", loss_weighting="min_snr"), "--loss-weighting uniform"),
    (dict(objective="flow", flow_times="beta"), "Unknown flow_times"),
])
def test_settings_that_do_not_fit_together_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config("cpu", **overrides)


@pytest.mark.parametrize("preset", ["paper", "cpu", "tiny"])
def test_the_flow_objective_sets_its_own_prediction_weighting_and_sampler(preset):
    cfg = get_config(preset, objective="flow")
    assert (cfg.prediction, cfg.loss_weighting, cfg.sampler) == ("v", "uniform", "heun")
    make_sampler(GRID, cfg.sampler, cfg.sample_steps, cfg.eta, cfg.objective)  # a sampler that fits
    assert get_config(preset, objective="flow", sampler="euler").sampler == "euler"  # what is given is kept


def test_clip_of_flow_samples_is_the_data_range():
    """The sampler's last step lands at t = 0 and the images are clipped to [-1, 1], as for DDPM."""
    x = sample(GaussianVelocity(scale=-3.0), GRID, jax.random.key(4), 4, sampler="euler", steps=3)
    assert float(jnp.max(jnp.abs(x))) <= 1.0
