import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers.sampling import (SAMPLERS, Autoguidance, DDIMSampler, FlowSampler, make_sampler, network_evaluations,
                              sample, time_grid)
from helpers.schedules import NoiseSchedule
from helpers.unet import UNetConfig, create_unet

TINY = UNetConfig(hidden_dims=(4, 8), num_res_blocks=1, attention_resolutions=(), time_embedding_dim=8,
                  max_norm_groups=4, num_heads=1)


def _lambdas(schedule, t):
    return 0.5 * np.log(np.asarray(schedule.snr(np.asarray(t)), np.float64))


def test_pairs_are_explicit_and_end_at_the_clean_image():
    s = NoiseSchedule.cosine(1000)
    for name in ("ddim", "dpmpp_2m", "dpmpp_2m_sde"):
        p = make_sampler(s, name, 100).pairs()
        assert p.shape == (100, 2) and p[-1, 1] == -1
        np.testing.assert_array_equal(p[1:, 0], p[:-1, 1])  # each step starts where the last one ended
        assert np.all(np.diff(p[:, 0]) < 0)
    ddpm = make_sampler(NoiseSchedule.cosine(5), "ddpm").pairs()  # Ho et al.'s algorithm 2: every timestep
    np.testing.assert_array_equal(ddpm, [[4, 3], [3, 2], [2, 1], [1, 0], [0, -1]])
    p7 = make_sampler(NoiseSchedule.cosine(100), "ddim", 7).pairs()  # uneven spacing: explicit pairs
    assert p7[-1, 1] == -1 and len(np.unique(p7[:, 0])) == 7
    with pytest.raises(ValueError, match="sample steps must be in 1..995"):
        make_sampler(s, "ddim", 996)


@pytest.mark.parametrize("steps", [10, 25, 50])
def test_the_grid_spends_its_steps_where_the_image_changes(steps):
    """The cpu preset's schedule (cosine, clipped betas): at most one evaluation below lambda = -5 and at most
    a fifth below lambda = -3.4 (t >= 978), where the signal is under 3% of the image."""
    s = NoiseSchedule.cosine(1000)
    for name in ("ddim", "dpmpp_2m_sde"):
        lam = _lambdas(s, make_sampler(s, name, steps).pairs()[:, 0])
        assert np.sum(lam < -5) <= 1 and np.sum(lam < -3.4) <= steps / 5, (name, lam[:8])


def test_the_grid_is_evenly_spaced_in_lambda_from_the_start_to_the_cleanest_timestep():
    s = NoiseSchedule.cosine(1000)
    t = time_grid(s, 50)
    lam = _lambdas(s, t)
    assert lam[0] == pytest.approx(-4.8, abs=0.1) and t[-1] <= 2  # from lambda = -4.8 to the cleanest timesteps
    targets = np.linspace(lam[0], _lambdas(s, 0), 51)[:-1]  # even in lambda; each the nearest timestep's:
    rounding = np.maximum(np.abs(_lambdas(s, t + 1) - lam), np.abs(_lambdas(s, np.maximum(t - 1, 0)) - lam)) / 2
    assert np.all(np.abs(lam - targets)[:-4] <= rounding[:-4] + 1e-6)  # (the last few: timesteps run out at t ~ 0)
    np.testing.assert_array_equal(time_grid(s, 995), np.arange(994, -1, -1))  # every timestep in the range
    short = NoiseSchedule.linear(20)  # never as noisy as lambda = -4.8: starts at its last timestep
    assert time_grid(short, 20)[0] == 19


def test_at_two_steps_no_sampler_evaluates_at_t_zero():
    s = NoiseSchedule.cosine(1000)
    for name in set(SAMPLERS) - {"ddpm"}:
        first_times = make_sampler(s, name, 2).pairs()[:, 0]
        assert np.all(first_times > 0), (name, first_times)


def test_flow_and_ddpm_grids_at_equal_steps_visit_the_same_noise_levels():
    """Flow time t has SNR ((1 - t) / t)^2; at equal steps it equals the SNR at the DDPM grid's timesteps."""
    s = NoiseSchedule.cosine(1000)
    for steps in (2, 5, 25):
        flow = FlowSampler(s, steps).pairs()
        ddim = make_sampler(s, "ddim", steps).pairs()
        np.testing.assert_allclose(np.log(((1 - flow[:, 0]) / flow[:, 0]) ** 2), np.log(s.snr(ddim[:, 0])),
                                   atol=1e-4)
        assert flow[-1, 1] == 0.0


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_ddim_eta_one_matches_ddpm_posterior(kind):
    """DDIM with eta = 1 over every step is DDPM's ancestral step (Ho et al. 2020, eqs. 6-7)."""
    s = NoiseSchedule.create(kind, 1000)
    ddim = make_sampler(s, "ddpm")
    assert ddim.steps == 1000 and ddim.eta == 1.0
    k = jax.random.split(jax.random.key(0), 3)
    x_t = jax.random.normal(k[0], (3, 4, 4, 1))
    x0 = jnp.clip(jax.random.normal(k[1], x_t.shape), -1, 1)
    for t in (999, 700, 300, 1):
        ab, ab_prev, beta = s.alpha_bar_at(t), s.alpha_bar_at(t - 1), s.betas[t]
        posterior_variance = (1 - ab_prev) / (1 - ab) * beta  # beta_tilde_t, eq. 7
        assert float(ddim.sigma(t, t - 1) ** 2) == pytest.approx(float(posterior_variance), rel=1e-3)  # float32
        beta = 1 - ab / ab_prev  # betas[t] up to float32 rounding, which 1 / (1 - ab) amplifies near t = 0
        posterior_mean = jnp.sqrt(ab_prev) * beta / (1 - ab) * x0 + jnp.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x_t
        eps = (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
        np.testing.assert_allclose(ddim.step(x_t, x0, eps, t, t - 1, jnp.zeros_like(x_t)), posterior_mean,
                                   rtol=1e-4, atol=1e-4)


def test_last_step_adds_no_noise():
    s = NoiseSchedule.cosine(100)
    x = jnp.ones((1, 2, 2, 1))
    noise = jnp.full_like(x, 5.0)
    assert float(DDIMSampler(s, 100, 1.0).sigma(0, -1)) == 0.0
    np.testing.assert_allclose(make_sampler(s, "ddpm").step(x, 0.3 * x, x, 0, -1, noise), 0.3 * x, atol=1e-6)


def test_ddim_eta_zero_deterministic_and_eta_one_not():
    s = NoiseSchedule.cosine(50)
    model = create_unet(TINY, seed=1)
    a = sample(model, s, jax.random.key(0), 4, steps=10, eta=0.0)
    # same starting noise x_T (first split of the key) but different per-step noise keys
    b = sample(model, s, jax.random.key(0), 4, steps=10, eta=0.0)
    np.testing.assert_array_equal(a, b)
    c = sample(model, s, jax.random.key(0), 4, steps=10, eta=1.0)
    assert not np.allclose(a, c)
    assert a.shape == (4, 32, 32, 1) and float(jnp.abs(a).max()) <= 1.0


def test_eta_zero_ignores_step_noise():
    s = NoiseSchedule.cosine(50)
    smp = DDIMSampler(s, 10, 0.0)
    x = jnp.ones((1, 2, 2, 1))
    np.testing.assert_array_equal(smp.step(x, 0.5 * x, x, 40, 30, jnp.zeros_like(x)),
                                  smp.step(x, 0.5 * x, x, 40, 30, 9 * jnp.ones_like(x)))


def test_trajectory_and_ddpm_sampler():
    s = NoiseSchedule.linear(20)
    model = create_unet(TINY)
    x, (xs, x0s, pairs) = sample(model, s, jax.random.key(1), 3, sampler="ddpm", return_trajectory=True)
    assert xs.shape == (20, 3, 32, 32, 1) and x0s.shape == xs.shape and pairs.shape == (20, 2)
    np.testing.assert_allclose(x, jnp.clip(xs[-1], -1, 1))
    with pytest.raises(ValueError, match="Unknown sampler"):
        make_sampler(s, "lms")
    with pytest.raises(ValueError, match="eta"):
        make_sampler(s, "ddim", 10, eta=2.0)
    with pytest.raises(ValueError, match="does not sample a flow run"):
        make_sampler(s, "ddim", 10, objective="flow")
    with pytest.raises(ValueError, match="does not sample a ddpm run"):
        make_sampler(s, "heun", 10, objective="ddpm")


def test_guidance_uses_both_branches():
    """Classifier-free guidance: out_uncond + w (out_cond - out_uncond), with label `num_classes` as "none"."""
    from helpers.sampling import model_output

    model = _randomised(create_unet(TINY.replace(num_classes=10)), 1)
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 1))
    labels, tt = jnp.array([1, 2]), jnp.full((2,), 5)
    cond, uncond = model(x, tt, labels), model(x, tt, jnp.full((2,), 10))
    np.testing.assert_allclose(model_output(model, x, 5, labels, 3.0), uncond + 3.0 * (cond - uncond),
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(cond, uncond, atol=1e-4)  # the label matters, so both branches are seen


def test_a_run_samples_a_conditional_model_with_labels_in_turn_and_guidance():
    from helpers.config import get_config
    from helpers.runs import draw_samples
    from helpers.training import TrainState

    cfg = get_config("tiny", model=TINY.replace(num_classes=10), num_timesteps=50, guidance_scale=2.0,
                     guide_fraction=None, autoguidance_scale=1.0)
    state = TrainState(cfg)
    _randomised(state.ema.model, 1)  # random weights: the zero-initialised output layer would ignore the label
    key = jax.random.key(0)
    got = np.asarray(draw_samples(cfg, state, key, 12, steps=3, autoguidance=None))
    want = sample(state.ema.model, NoiseSchedule.create("cosine", 50), key, 12, steps=3, prediction=cfg.prediction,
                  labels=jnp.arange(12) % 10, guidance_scale=2.0)
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-6)
    other = np.asarray(draw_samples(cfg, state, key, 12, steps=3, guidance_scale=0.0, autoguidance=None))
    assert not np.allclose(got, other, atol=1e-4)  # the guidance weight is used


def test_negative_guidance_scale_is_refused():
    from helpers.config import get_config

    with pytest.raises(ValueError, match="guidance_scale must not be negative"):
        get_config("tiny", guidance_scale=-1.0)


def _randomised(model, seed):
    """The model with random weights (the zero-initialised output layer would make every model agree)."""


    params = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]))
    return model


def test_autoguidance_formula():
    from helpers.sampling import autoguided_output

    good, weak = _randomised(create_unet(TINY, seed=0), 1), _randomised(create_unet(TINY, seed=0), 2)
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 1))
    tt = jnp.full((2,), 7)
    g, b = good(x, tt), weak(x, tt)
    np.testing.assert_allclose(autoguided_output(good, weak, x, 7, scale=2.5), b + 2.5 * (g - b),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(autoguided_output(good, weak, x, 7, scale=1.0), g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(autoguided_output(good, None, x, 7, scale=2.5), g)  # no guide: off


def test_sampling_with_a_guide():
    good, weak = _randomised(create_unet(TINY, seed=0), 1), _randomised(create_unet(TINY, seed=0), 2)
    s = NoiseSchedule.create("cosine", 50)
    key = jax.random.key(0)
    plain = sample(good, s, key, 3, steps=4, eta=1.0)
    same = sample(good, s, key, 3, steps=4, eta=1.0, autoguidance=Autoguidance(good, 3.0))
    np.testing.assert_allclose(same, plain, atol=1e-5)  # a guide equal to the model changes nothing
    guided = sample(good, s, key, 3, steps=4, eta=1.0, autoguidance=Autoguidance(weak, 3.0))
    assert guided.shape == plain.shape and not np.allclose(guided, plain, atol=1e-3)


class GaussianDenoiser(nnx.Module):
    """The optimal predictor for data x0 ~ N(0, s^2 I): eps*(x_t, t) = sqrt(1 - ab) x_t / (ab s^2 + 1 - ab),
    given as the epsilon, v or x0 target."""

    def __init__(self, schedule, s, prediction):
        self.cfg = UNetConfig(image_size=8, num_classes=None)
        self.schedule, self.s, self.prediction = nnx.data(schedule), s, prediction

    def __call__(self, x, t, labels=None):
        ab = self.schedule.alpha_bar_at(t)[:, None, None, None]
        eps = jnp.sqrt(1 - ab) * x / (ab * self.s**2 + 1 - ab)
        x0 = (x - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab)
        return {"epsilon": eps, "x0": x0, "v": jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0}[self.prediction]


def _gaussian_samples(sampler, steps, prediction="epsilon", eta=0.0, s=0.3, n=2000):
    schedule = NoiseSchedule.cosine(1000)
    model = GaussianDenoiser(schedule, s, prediction)
    return np.asarray(sample(model, schedule, jax.random.key(0), n, sampler=sampler, steps=steps, eta=eta,
                             prediction=prediction, clip_x0=False))


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("dpmpp_2m", 0.0), ("dpmpp_2m_sde", 0.0)])
def test_samplers_draw_the_gaussian_data_variance(sampler, eta):
    """With the exact denoiser, 500 steps of each sampler give samples of variance s^2 = 0.09
    (s = 0.3 keeps the final clip to [-1, 1] from shrinking it)."""
    x = _gaussian_samples(sampler, 500, eta=eta)
    assert abs(x.mean()) < 0.01
    assert x.var() == pytest.approx(0.09, rel=0.04)


def test_ddpm_draws_the_gaussian_data_variance():
    assert _gaussian_samples("ddpm", 1000, n=500).var() == pytest.approx(0.09, rel=0.04)


def test_dpm_solver_beats_ddim_at_ten_steps():
    """The second-order solver's variance error at 10 steps is smaller than first-order DDIM's."""
    error = {name: abs(_gaussian_samples(name, 10).var() - 0.09) for name in ("ddim", "dpmpp_2m")}
    assert error["dpmpp_2m"] < 0.5 * error["ddim"], error
    sde_error = abs(_gaussian_samples("dpmpp_2m_sde", 10).var() - 0.09)
    ddim_eta1_error = abs(_gaussian_samples("ddim", 10, eta=1.0).var() - 0.09)
    assert sde_error < ddim_eta1_error, (sde_error, ddim_eta1_error)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_sde"])
def test_dpm_solver_gives_the_same_samples_for_every_target(sampler):
    eps = _gaussian_samples(sampler, 10, "epsilon", n=64)
    for prediction in ("v", "x0"):
        np.testing.assert_allclose(_gaussian_samples(sampler, 10, prediction, n=64), eps, rtol=1e-3, atol=1e-4)


def test_dpm_solver_first_order_steps_are_ddim():
    """Without a previous estimate, the ODE step is DDIM with eta = 0 and the SDE step DDIM with eta = 1."""
    s = NoiseSchedule.cosine(1000)
    k = jax.random.split(jax.random.key(1), 3)
    x_t, x0, z = (jax.random.normal(kk, (2, 4, 4, 1)) for kk in k)
    eps = (x_t - jnp.sqrt(s.alpha_bar_at(600)) * x0) / jnp.sqrt(1 - s.alpha_bar_at(600))
    for name, eta in (("dpmpp_2m", 0.0), ("dpmpp_2m_sde", 1.0)):
        ours = make_sampler(s, name, 10).step(x_t, x0, eps, 600, 500, z)
        np.testing.assert_allclose(ours, DDIMSampler(s, 10, eta).step(x_t, x0, eps, 600, 500, z), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(make_sampler(s, "dpmpp_2m", 10).step(x_t, x0, eps, 0, -1, z), x0, atol=1e-6)


def test_samplers_start_at_the_noise_level_of_their_first_step():
    """x_T ~ N(0, I) is scaled to the noise of the first step: sigma = sqrt(1 - ab) there (DDPM: 1 at
    t = T - 1), or the flow time t, where x_t = (1 - t) x0 + t eps. A flow model of zero velocity keeps it."""
    from helpers.sampling import starting_noise_level

    s = NoiseSchedule.cosine(1000)
    first = int(time_grid(s, 10)[0])
    assert starting_noise_level(make_sampler(s, "ddim", 10), first) == pytest.approx(
        float(jnp.sqrt(1 - s.alpha_bar_at(first))))
    assert starting_noise_level(make_sampler(s, "ddpm"), 999) == pytest.approx(1.0, abs=1e-6)

    class Still(nnx.Module):
        cfg = UNetConfig(image_size=8)

        def __call__(self, x, t, labels=None):
            return jnp.zeros_like(x)

    x_T = 0.3 * jax.random.normal(jax.random.key(5), (2, 8, 8, 1))
    out = sample(Still(), s, jax.random.key(0), 2, sampler="euler", steps=3, x_T=x_T)
    t_first = float(make_sampler(s, "euler", 3).pairs()[0, 0])
    assert 0.99 < t_first < 0.995
    np.testing.assert_allclose(out, t_first * x_T, rtol=1e-6)


def test_guidance_interval_runs_the_guide_only_inside_it():
    from helpers.sampling import network_evaluations

    good, weak = _randomised(create_unet(TINY, seed=0), 1), _randomised(create_unet(TINY, seed=0), 2)
    s = NoiseSchedule.create("cosine", 50)
    key = jax.random.key(0)
    plain = sample(good, s, key, 2, steps=5, eta=1.0)
    everywhere = sample(good, s, key, 2, steps=5, eta=1.0, autoguidance=Autoguidance(weak, 3.0))
    nowhere = sample(good, s, key, 2, steps=5, eta=1.0, autoguidance=Autoguidance(weak, 3.0, (60, 70)))
    all_of_it = sample(good, s, key, 2, steps=5, eta=1.0, autoguidance=Autoguidance(weak, 3.0, (0, 49)))
    np.testing.assert_allclose(nowhere, plain, atol=1e-5)
    np.testing.assert_allclose(all_of_it, everywhere, atol=1e-5)
    smp = make_sampler(s, "ddim", 5)
    t = smp.pairs()[:, 0]
    assert network_evaluations(smp) == 5 and network_evaluations(smp, guided=True) == 10
    assert network_evaluations(smp, (10, 30), guided=True) == 5 + np.sum((t >= 10) & (t <= 30))


