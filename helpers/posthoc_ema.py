"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
https://arxiv.org/abs/2312.02696, section 3 and appendix C): choose the EMA length after training.

A power-function EMA after t steps averages the weights theta_1 .. theta_t with weights that grow like
tau^gamma; its length sigma_rel is the standard deviation of that profile relative to t (eq. 3). Training
tracks two of them (helpers.training.PowerEMA) and stores snapshots of both at the checkpoint steps
(`ema_snapshots/` in the run folder). Each snapshot is a known weighted sum of theta_1 .. theta_t, so
the EMA of any other length is, to the residual printed with it, a least-squares combination of them.

The profiles here are the exact discrete ones of the update in training, so a snapshot's weights are
reproduced to float precision (tests/test_posthoc_ema.py)."""

import os
from pathlib import Path

import numpy as np

SNAPSHOT_DIR = "ema_snapshots"
MAX_SIGMA_REL = float(np.sqrt(1 / 12))  # gamma = 0: a plain average of every step so far


def sigma_rel_of(gamma: float) -> float:
    """The relative length of the power-function EMA of exponent gamma (eq. 3)."""
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def gamma_of(sigma_rel: float) -> float:
    """The exponent whose EMA has relative length sigma_rel: eq. 3 solved for gamma, the largest real
    root of gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0."""
    if not 0.0 < sigma_rel < MAX_SIGMA_REL:
        raise ValueError(f"An EMA length (sigma_rel) must lie in (0, {MAX_SIGMA_REL:.3f}), got {sigma_rel}.")
    c = 1.0 / sigma_rel**2
    roots = np.roots([1.0, 7.0, 16.0 - c, 12.0 - c])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def power_ema_beta(gamma: float, step):
    """The decay after optimiser step `step` (>= 1): (1 - 1/t)^(gamma + 1) (eq. 4); 0 at the first step."""
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def profile(gamma: float, step: int, length: int) -> np.ndarray:
    """The weight of theta_i (i = 1 .. length) in the power EMA of exponent gamma after `step` steps:
    (i/t)^(gamma+1) - ((i-1)/t)^(gamma+1) up to t = step, 0 after it. The weights sum to 1."""
    i = np.arange(1, length + 1, dtype=np.float64)
    w = (np.minimum(i, step) / step) ** (gamma + 1) - (np.minimum(i - 1, step) / step) ** (gamma + 1)
    return w


def combination(snapshots, step: int, sigma_rel: float) -> tuple[np.ndarray, float]:
    """Coefficients x with sum_k x_k profile_k closest (least squares) to the EMA of length sigma_rel after
    `step` steps, for `snapshots` = [(step_k, sigma_rel_k)] taken at or before `step`; also the L1 norm of
    the profile's error (0: exact; the reconstruction of any weights is off by at most that times their
    largest change). The coefficients sum to 1, so constant weights stay themselves."""
    if not snapshots or any(s > step for s, _ in snapshots):
        raise ValueError(f"Post-hoc EMA at step {step} needs snapshots taken at or before it, got {snapshots}.")
    basis = np.stack([profile(gamma_of(s_rel), s, step) for s, s_rel in snapshots], axis=1)
    target = profile(gamma_of(sigma_rel), step, step)
    x = np.linalg.lstsq(basis, target, rcond=None)[0]
    x = x / x.sum()
    return x, float(np.abs(basis @ x - target).sum())


def save_snapshot(run_dir, step: int, lengths, averages) -> Path:
    """Write the tracked averages (one list of arrays per length) of `step` to RUN/ema_snapshots/; the
    file appears whole or not at all (a run killed while writing keeps the ones before)."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    folder.mkdir(exist_ok=True)
    arrays = {f"{j}/{i}": np.asarray(leaf) for j, leaves in enumerate(averages) for i, leaf in enumerate(leaves)}
    path, partial = folder / f"step_{step:08d}.npz", folder / f"step_{step:08d}.partial.npz"
    np.savez(partial, lengths=np.asarray(lengths, np.float64), **arrays)
    os.replace(partial, path)
    return path


def snapshot_files(run_dir) -> dict[int, Path]:
    """{step: file} of the run's snapshots, oldest first."""
    files = sorted((Path(run_dir) / SNAPSHOT_DIR).glob("step_*[0-9].npz"))
    return {int(f.stem.removeprefix("step_")): f for f in files}


def reconstruct(run_dir, sigma_rel: float, like: list, step: int | None = None) -> tuple[list, dict]:
    """The EMA of length sigma_rel after `step` steps (default: the newest snapshot's) from the run's
    snapshots up to that step, as arrays shaped like the list `like`; and what it was made of."""
    files = snapshot_files(run_dir)
    if not files:
        raise ValueError(f"{run_dir} has no EMA snapshots ({SNAPSHOT_DIR}/): it was trained without --ema-lengths, "
                         f"so only its own EMA can be sampled (drop --ema-length).")
    step = max(files) if step is None else int(step)
    if step not in files:
        raise ValueError(f"{run_dir} has EMA snapshots at steps {list(files)}, not at {step}: choose one of them.")
    terms = []  # (step_k, sigma_rel_k, leaves)
    for s in [s for s in files if s <= step]:
        try:
            with np.load(files[s]) as f:
                terms += [(s, float(length), [f[f"{j}/{i}"] for i in range(len(like))])
                          for j, length in enumerate(f["lengths"])]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"The EMA snapshot {files[s]} cannot be read ({err}): delete it, and post-hoc "
                             f"EMA uses the others.") from err
    if any(a.shape != np.shape(b) for _, _, leaves in terms for a, b in zip(leaves, like)):
        raise ValueError(f"The EMA snapshots in {run_dir} do not match this run's model.")
    x, residual = combination([(s, length) for s, length, _ in terms], step, sigma_rel)
    leaves = [sum(c * np.asarray(t[2][i], np.float64) for c, t in zip(x, terms)).astype(np.asarray(like[i]).dtype)
              for i in range(len(like))]
    return leaves, {"step": step, "sigma_rel": sigma_rel, "snapshots": len(terms), "profile_error": residual}
