"""Post-hoc EMA (helpers.posthoc_ema, helpers.training.PowerEMA): the tracked averages are their profiles,
and an EMA length chosen afterwards is reconstructed from the snapshots."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers.posthoc_ema import (combination, gamma_of, power_ema_beta, profile, reconstruct, save_snapshot,
                                 sigma_rel_of, snapshot_files)
from helpers.training import PowerEMA

STEPS, EVERY = 600, 25


def toy_weights(steps: int = STEPS, seed: int = 0) -> np.ndarray:
    """theta_0 .. theta_steps of a 'training run': a drifting random walk of 5 parameters."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0.0, 0.05, (steps + 1, 5)) + 0.01, axis=0)


def tracked(lengths, theta: np.ndarray, every: int | None = None, run_dir=None) -> list[np.ndarray]:
    """PowerEMA over a one-parameter-vector 'model' fed theta_1 .. theta_T (snapshots every `every` steps)."""
    model = nnx.Linear(5, 1, use_bias=False, rngs=nnx.Rngs(0))
    model.kernel[...] = jnp.asarray(theta[0][:, None], jnp.float32)
    ema = PowerEMA(model, lengths)
    for t in range(1, len(theta)):
        model.kernel[...] = jnp.asarray(theta[t][:, None], jnp.float32)
        ema.update(model, t)
        if every and t % every == 0:
            save_snapshot(run_dir, t, lengths, ema.snapshot())
    return [np.asarray(m.kernel[...])[:, 0] for m in ema.models]


def test_sigma_rel_and_gamma_are_inverse_and_the_paper_values():
    assert gamma_of(0.05) == pytest.approx(16.97, abs=0.01) and gamma_of(0.10) == pytest.approx(6.94, abs=0.01)
    for s in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert sigma_rel_of(gamma_of(s)) == pytest.approx(s, rel=1e-9)
    for bad in (0.0, 0.3, -0.1):
        with pytest.raises(ValueError, match="EMA length"):
            gamma_of(bad)


def test_profile_is_a_distribution_with_its_length():
    for s, t in ((0.05, 600), (0.1, 300), (0.2, 1000)):
        w = profile(gamma_of(s), t, t + 50)
        assert w.sum() == pytest.approx(1.0) and np.all(w >= 0) and np.all(w[t:] == 0)
        i = np.arange(1, t + 51)
        mean = w @ i
        assert np.sqrt(w @ (i - mean) ** 2) / t == pytest.approx(s, rel=0.02)  # eq. 3, continuous: exact as t grows
    assert power_ema_beta(5.0, 1) == 0.0  # the first step replaces the initial weights


def test_tracked_power_ema_is_its_profile():
    theta = toy_weights()
    for length, average in zip((0.05, 0.10), tracked((0.05, 0.10), theta)):
        direct = profile(gamma_of(length), STEPS, STEPS) @ theta[1:]
        np.testing.assert_allclose(average, direct, rtol=1e-5, atol=1e-5)


def test_a_snapshot_length_is_reconstructed_exactly(tmp_path):
    theta = toy_weights()
    tracked((0.05, 0.10), theta, EVERY, tmp_path)
    assert list(snapshot_files(tmp_path)) == list(range(EVERY, STEPS + 1, EVERY))
    for step in (300, STEPS):
        x, error = combination([(s, length) for s in range(EVERY, step + 1, EVERY) for length in (0.05, 0.10)],
                               step, 0.10)
        assert error < 1e-9 and x[-1] == pytest.approx(1.0, abs=1e-6)
        (leaf,), _ = reconstruct(tmp_path, 0.10, [np.zeros((5, 1), np.float32)], step)
        np.testing.assert_allclose(leaf[:, 0], profile(gamma_of(0.10), step, step) @ theta[1:step + 1], atol=1e-5)


@pytest.mark.parametrize("length", [0.04, 0.07, 0.15])
def test_reconstructed_ema_matches_one_tracked_at_that_length(tmp_path, length):
    """Any other length: the snapshots' combination is the one least squares chose (exactly), its profile is
    within 2% (L1) of the wanted one, and so the weights are within that share of their spread of an EMA
    tracked directly at that length through the whole run; much closer than the nearest tracked length."""
    theta = toy_weights()
    tracked((0.05, 0.10), theta, EVERY, tmp_path)
    (leaf,), made_of = reconstruct(tmp_path, length, [np.zeros((5, 1), np.float32)])
    x, error = combination([(s, r) for s in range(EVERY, STEPS + 1, EVERY) for r in (0.05, 0.10)], STEPS, length)
    basis = np.stack([profile(gamma_of(r), s, STEPS) for s in range(EVERY, STEPS + 1, EVERY) for r in (0.05, 0.10)], 1)
    np.testing.assert_allclose(leaf[:, 0], (basis @ x) @ theta[1:], atol=1e-5)  # the combination, exactly
    assert made_of["profile_error"] == pytest.approx(error) and error < 0.02
    (direct,) = tracked((length,), theta)
    bound = error * np.ptp(theta[1:], axis=0) / 2 + 1e-5
    assert np.all(np.abs(leaf[:, 0] - direct) <= bound)
    nearest = tracked((0.05 if length < 0.075 else 0.10,), theta)[0]
    assert np.abs(leaf[:, 0] - direct).max() < 0.2 * np.abs(nearest - direct).max()


def test_reconstruction_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="trained without --ema-lengths"):
        reconstruct(tmp_path, 0.05, [np.zeros((5, 1))])
    tracked((0.05, 0.10), toy_weights(100), 50, tmp_path)
    with pytest.raises(ValueError, match="not at 75"):
        reconstruct(tmp_path, 0.05, [np.zeros((5, 1))], step=75)
    with pytest.raises(ValueError, match="do not match"):
        reconstruct(tmp_path, 0.05, [np.zeros((4, 1))])
    snapshot_files(tmp_path)[50].write_bytes(b"not a snapshot")
    with pytest.raises(ValueError, match="cannot be read"):
        reconstruct(tmp_path, 0.05, [np.zeros((5, 1))])
