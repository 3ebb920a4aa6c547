"""What the notebooks share (`import tutorial`, this folder next to them): the preset switch, where figures
go, and the tutorial's trained run.

- `TUTORIAL_PRESET=tiny` switches every notebook to tiny settings (seconds, for CI); unset, the
  notebooks use the preset chosen from the JAX backend (`cpu` without an accelerator, else `paper`).
  `MNIST_DIFFUSION_QUICK=1` runs any preset as a quick check of its code (`quick()`).
- `show(fig, name)` displays a figure inline in Jupyter; run as a plain script (`python
  notebooks/04_train_ddpm.py`) it saves the figure under `notebooks/figures/<notebook>/` instead.
- `trained_run()` is the run notebook 04 trains (`runs/tutorial-<preset>/`); later notebooks load
  its checkpoint, and train it first when it is missing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (figures show inline), False in a plain script."""
    return "ipykernel" in sys.modules


def tutorial_preset() -> str:
    """The preset every notebook uses: $TUTORIAL_PRESET, else the backend's default."""
    from helpers.config import PRESETS, default_preset_name

    name = os.environ.get("TUTORIAL_PRESET") or default_preset_name()
    if name not in PRESETS:
        raise ValueError(f"TUTORIAL_PRESET={name!r} is not a preset: choose one of {', '.join(PRESETS)}.")
    return name


def quick() -> bool:
    """Whether this notebook runs as a check of its code rather than for its figures: at `TUTORIAL_PRESET=tiny`,
    or with `MNIST_DIFFUSION_QUICK=1` at any preset (helpers.config.QUICK_VARIABLE); then it draws fewer images."""
    from helpers.config import quick as quick_check

    return tutorial_preset() == "tiny" or quick_check()


def runs_dir() -> Path:
    """Where tutorial runs live: $TUTORIAL_RUNS_DIR, else `runs/` at the repository root (`runs/quick/` for
    quick checks, so that they never meet a real run's folder)."""
    from helpers.config import quick as quick_check

    return Path(os.environ.get("TUTORIAL_RUNS_DIR") or ROOT / "runs" / ("quick" if quick_check() else ""))


def tutorial_run_dir(preset: str | None = None) -> Path:
    """The folder of the tutorial run notebook 04 trains: `runs/tutorial-<preset>/`."""
    return runs_dir() / f"tutorial-{preset or tutorial_preset()}"


def setup(notebook: str) -> str:
    """Apply `helpers.environment.tune_for_cpu` (before JAX starts), print what this notebook runs
    with (preset, machine, versions), and return the preset name."""
    from helpers.environment import tune_for_cpu

    tune_for_cpu(restart=False)  # a kernel cannot restart itself: see the Performance page for huge pages
    import flax
    import jax
    import optax

    from helpers.environment import machine_description

    os.environ["TUTORIAL_NOTEBOOK"] = notebook
    preset = tutorial_preset()
    print(f"notebook {notebook}: preset {preset!r} on {machine_description()}")
    print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}; "
          f"started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return preset


def show(fig, name: str):
    """Show `fig` inline (Jupyter) or save it as notebooks/figures/<notebook>/<name>.png (script)."""
    import matplotlib.pyplot as plt

    if in_jupyter():
        plt.show()
        return None
    folder = ROOT / "notebooks" / "figures" / os.environ.get("TUTORIAL_NOTEBOOK", "notebook")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"saved {path.relative_to(ROOT)}")
    return path


def ensure_run(run_dir, cfg, progress: bool = True):
    """(cfg, state, summary) of the finished run in `run_dir`: trained with `cfg` if the folder is
    empty, resumed if it was interrupted, loaded as it is if it has finished."""
    import json

    from helpers.data import file_lock
    from helpers.runs import load_run, train_run

    run_dir = Path(run_dir)
    if (run_dir / "config.json").is_file():
        _check_same_config(run_dir, cfg)
    # One trainer per folder: a second notebook asking for the same run (two notebooks run side by
    # side, e.g. by `pytest -n 2`) waits here and then loads the finished run.
    with file_lock(run_dir.parent / f".{run_dir.name}.lock"):
        if not (run_dir / "summary.json").is_file():
            if (run_dir / "config.json").is_file():  # an interrupted run: continue it
                train_run(None, run_dir, resume=True, evaluate=False, progress=progress)
            else:
                train_run(cfg, run_dir, evaluate=False, progress=progress)
    cfg, state = load_run(run_dir)
    return cfg, state, json.loads((run_dir / "summary.json").read_text())


def _check_same_config(run_dir: Path, cfg) -> None:
    """Refuse to reuse a run trained with other settings (a changed budget or recipe would otherwise
    be silently ignored); the folder is left as it is."""
    import json

    from helpers.checkpoints import read_config

    def flat(c):  # model fields beside the others; fields added since the run take their defaults
        d = json.loads(c.to_json())
        return {**{k: v for k, v in d.items() if k != "model"}, **d["model"]}

    saved, wanted = flat(read_config(run_dir)), flat(cfg)
    changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in changed[:4])
        raise ValueError(f"{run_dir} holds a run with other settings ({detail}). Delete or rename that "
                         f"folder to train with the new settings, or set them back to reuse it.")


def trained_run(preset: str | None = None):
    """(cfg, state, summary) of the tutorial run, trained (notebook 04's job) if it is missing.

    `state.model` holds the raw weights, `state.ema.model` the EMA weights, `state.guide` the
    autoguidance guide; the loss history is in the run folder's history.json."""
    from helpers.config import get_config

    preset = preset or tutorial_preset()
    run = tutorial_run_dir(preset)
    if not (run / "summary.json").is_file():
        print(f"No finished run in {run}: training it now (this is what notebook 04 does).")
    return ensure_run(run, get_config(preset))


def show_gif(path, width: int = 360, alt: str = "animation"):
    """Display a GIF inline in Jupyter (embedded, so it survives in the saved notebook and on the
    docs site); from a script, just say where it is."""
    import base64

    path = Path(path)
    if not in_jupyter():
        print(f"saved {path}")
        return
    from IPython.display import HTML, display

    data = base64.b64encode(path.read_bytes()).decode()
    display(HTML(f'<img alt="{alt}" width="{width}" src="data:image/gif;base64,{data}">'))


def plot_image_rows(rows: dict, ncols: int | None = None, size: float = 0.55, title: str | None = None):
    """One titled row of images per entry of `rows` ({row title: images in [-1, 1]}): for comparing
    samplers, settings or models side by side on the same noise."""
    import matplotlib.pyplot as plt
    import numpy as np

    from helpers.plotting import image_grid

    ncols = ncols or max(len(x) for x in rows.values())
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(3.0, ncols * size), len(rows) * 2.3 * size),
                             squeeze=False)
    for ax, (name, x) in zip(axes[:, 0], rows.items()):
        ax.imshow(image_grid(np.asarray(x)[:ncols], ncols), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
