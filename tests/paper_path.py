"""The environment of a quick check at `paper` on the CPU, shared by the README-commands test and by the
notebooks run through nbmake (the root conftest.py).

MNIST_DIFFUSION_QUICK=1 (helpers.config.QUICK_VARIABLE) keeps every setting of the preset but its budget:
a few steps, a few images, the UNet narrowed to 8 channels at its first level (the same levels, blocks
and attention). So every path a learner with a GPU takes runs here in minutes, with the same code."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_QUICK = {"MNIST_DIFFUSION_QUICK": "1", "TUTORIAL_PRESET": "paper", "JAX_PLATFORMS": "cpu"}


def paper_env(tmp_path: Path, **extra) -> dict:
    """The test session's environment with the quick `paper` preset and runs under `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # no display: matplotlib finds Agg itself
    return {**env, **PAPER_QUICK, "TUTORIAL_RUNS_DIR": str(tmp_path / "runs"), "DISPLAY": "", **extra}
