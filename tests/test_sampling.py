import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.sampling import DDIMSampler, ddim_pairs, make_sampler, sample
from helpers.schedules import NoiseSchedule
from helpers.unet import UNetConfig, create_unet

TINY = UNetConfig(hidden_dims=(4, 8), num_res_blocks=1, attention_resolutions=(), time_embedding_dim=8,
                  max_norm_groups=4, num_heads=1)


def test_pairs_are_explicit_and_end_at_clean_image():
    p = ddim_pairs(1000, 100)
    assert p.shape == (100, 2)
    assert p[0, 0] == 999 and p[-1, 0] == 0 and p[-1, 1] == -1
    np.testing.assert_array_equal(p[1:, 0], p[:-1, 1])  # each step starts where the last one ended
    assert np.all(np.diff(p[:, 0]) < 0)
    np.testing.assert_array_equal(ddim_pairs(5, 5), [[4, 3], [3, 2], [2, 1], [1, 0], [0, -1]])  # DDPM's
    # uneven spacing is handled with explicit pairs, not t - T // N
    p7 = ddim_pairs(100, 7)
    assert p7[0, 0] == 99 and p7[-1, 1] == -1 and len(np.unique(p7[:, 0])) == 7
    with pytest.raises(ValueError):
        ddim_pairs(100, 101)


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
        make_sampler(s, "euler")
    with pytest.raises(ValueError, match="eta"):
        make_sampler(s, "ddim", 10, eta=2.0)


def test_guidance_uses_both_branches():
    model = create_unet(TINY.replace(num_classes=10))
    from helpers.sampling import model_output
    x = jnp.ones((2, 32, 32, 1))
    out = model_output(model, x, 5, jnp.array([1, 2]), 3.0)
    assert out.shape == x.shape


def test_trainer_samples_a_conditional_model_with_labels_in_turn_and_guidance():
    from helpers.config import get_config
    from helpers.training import Trainer

    cfg = get_config("tiny", model=TINY.replace(num_classes=10), num_timesteps=50, guidance_scale=2.0,
                     guide_fraction=None, autoguidance_scale=1.0)
    model = create_unet(cfg.model, seed=3)
    trainer = Trainer(cfg, model, np.zeros((cfg.batch_size, 28, 28, 1), np.uint8), total_steps=1)
    from flax import nnx  # random weights: the zero-initialised output layer would ignore the label
    params = nnx.state(trainer.ema.model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    nnx.update(trainer.ema.model, jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape)
                                                            for k, x in zip(keys, leaves)]))
    key = jax.random.key(0)
    got = np.asarray(trainer.sample(key, 12, steps=3))
    want = sample(trainer.ema.model, trainer.schedule, key, 12, steps=3, prediction=cfg.prediction,
                  labels=jnp.arange(12) % 10, guidance_scale=2.0)
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-6)
    other = np.asarray(trainer.sample(key, 12, steps=3, guidance_scale=0.0))
    assert not np.allclose(got, other, atol=1e-4)  # the guidance weight is used


def test_negative_guidance_scale_is_refused():
    from helpers.config import get_config

    with pytest.raises(ValueError, match="guidance_scale must not be negative"):
        get_config("tiny", guidance_scale=-1.0)


def _randomised(model, seed):
    """The model with random weights (the zero-initialised output layer would make every model agree)."""
    from flax import nnx

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
    np.testing.assert_allclose(autoguided_output(good, weak, x, 7, autoguidance_scale=2.5), b + 2.5 * (g - b),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(autoguided_output(good, weak, x, 7, autoguidance_scale=1.0), g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(autoguided_output(good, None, x, 7, autoguidance_scale=2.5), g)  # no guide: off


def test_sampling_with_a_guide():
    good, weak = _randomised(create_unet(TINY, seed=0), 1), _randomised(create_unet(TINY, seed=0), 2)
    s = NoiseSchedule.create("cosine", 50)
    key = jax.random.key(0)
    plain = sample(good, s, key, 3, steps=4, eta=1.0)
    same = sample(good, s, key, 3, steps=4, eta=1.0, guide=good, autoguidance_scale=3.0)
    np.testing.assert_allclose(same, plain, atol=1e-5)  # a guide equal to the model changes nothing
    guided = sample(good, s, key, 3, steps=4, eta=1.0, guide=weak, autoguidance_scale=3.0)
    assert guided.shape == plain.shape and not np.allclose(guided, plain, atol=1e-3)
