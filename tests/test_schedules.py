import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.schedules import NoiseSchedule


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_decreasing_in_unit_interval(kind):
    s = NoiseSchedule.create(kind, 1000)
    ab = np.asarray(s.alpha_bars, np.float64)
    assert ab.shape == (1000,)
    assert np.all(ab > 0) and np.all(ab <= 1)
    assert np.all(np.diff(ab) < 0)
    np.testing.assert_allclose(np.asarray(s.alphas), 1 - np.asarray(s.betas), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ab, np.cumprod(1 - np.asarray(s.betas, np.float64)), rtol=5e-5)


def test_linear_betas_exact():
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    b = np.asarray(s.betas)
    assert b[0] == pytest.approx(1e-4, rel=1e-6)
    assert b[-1] == pytest.approx(0.02, rel=1e-6)
    assert b[500] == pytest.approx(1e-4 + 500 * (0.02 - 1e-4) / 999, rel=1e-6)
    np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) / 999, rtol=1e-3)


def test_cosine_formula_at_known_points():
    T, s_ = 1000, 0.008
    s = NoiseSchedule.cosine(T)
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    # Before any clipping, alpha_bar[t] (after t+1 steps) = f(t+1) / f(0).
    for t in (0, 99, 499, 899):
        assert float(s.alpha_bars[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-5)
    assert float(s.alpha_bars[499]) == pytest.approx(0.4936, abs=2e-3)  # about half way
    b = np.asarray(s.betas)
    assert b.max() == pytest.approx(0.999, rel=1e-6)  # clipped at the end, not 0.9999
    # The last beta is clipped: alpha_bar[T-1] = 0.001 * alpha_bar[T-2] ~ 2.4e-9 (not 0, not ~2e-10 as
    # with a 0.9999 clip), so 1/sqrt(alpha_bar) stays finite; samplers clip x0 on top of that.
    assert float(s.alpha_bars[-1]) == pytest.approx(0.001 * float(s.alpha_bars[-2]), rel=1e-4)
    assert float(s.alpha_bars[-1]) > 1e-9


def test_cosine_is_gentler_than_linear_early():
    lin, cos = NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000)
    assert float(cos.alpha_bars[250]) > float(lin.alpha_bars[250])
    assert float(cos.snr(250)) > float(lin.snr(250))


def test_alpha_bar_before_first_step_is_one_and_snr():
    s = NoiseSchedule.cosine(100)
    assert float(s.alpha_bar_at(-1)) == 1.0
    ab = float(s.alpha_bars[10])
    assert float(s.snr(10)) == pytest.approx(ab / (1 - ab), rel=1e-5)


def test_unknown_schedule_and_bad_sizes():
    with pytest.raises(ValueError, match="choose one of"):
        NoiseSchedule.create("quadratic")
    with pytest.raises(ValueError, match="at least 2"):
        NoiseSchedule.cosine(1)
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule.linear(10, 0.5, 0.1)


def test_forward_noising_statistics():
    s = NoiseSchedule.cosine(1000)
    x0 = jnp.full((20000, 1, 1, 1), 0.7)
    for t in (10, 500, 990):
        noise = jax.random.normal(jax.random.key(t), x0.shape)
        xt = np.asarray(s.q_sample(x0, jnp.full((20000,), t), noise))
        ab = float(s.alpha_bars[t])
        assert xt.mean() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.02)
        assert xt.var() == pytest.approx(1 - ab, abs=0.03 * max(1 - ab, 0.1))
