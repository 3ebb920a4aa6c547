"""What the two `paper` path tests share: the environment of a quick check at `paper` on the CPU.

MNIST_DIFFUSION_QUICK=1 (helpers.config.QUICK_VARIABLE) keeps every setting of the preset but its budget:
a few steps, a few images, the UNet narrowed to 8 channels at its first level (the same levels, blocks
and attention). So every path a learner with a GPU takes runs here in minutes, with the same code."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def paper_env(tmp_path: Path, **extra) -> dict:
    """The test session's environment with the quick `paper` preset and runs under `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # no display: matplotlib finds Agg itself
    return {**env, "MNIST_DIFFUSION_QUICK": "1", "TUTORIAL_PRESET": "paper", "JAX_PLATFORMS": "cpu",
            "TUTORIAL_RUNS_DIR": str(tmp_path / "runs"), "DISPLAY": "", **extra}


NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.py"))


def run_notebook_at_paper(notebook: str, runs: Path) -> None:
    """`python notebooks/<notebook>.py` at the quick `paper` preset with no display: it must end well, say
    its preset and save its figures as files. Its runs go under `runs` (05-08 reuse 04's, or train it)."""
    r = subprocess.run([sys.executable, str(REPO / "notebooks" / f"{notebook}.py")], cwd=runs, env=paper_env(runs),
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "preset 'paper'" in r.stdout
    figures = REPO / "notebooks" / "figures" / notebook
    assert figures.is_dir() and any(figures.glob("*.png")), f"{notebook} saved no figures"
