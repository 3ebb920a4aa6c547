"""How long should I train? Quality against training minutes for the `cpu` preset.

    python benchmarks/training_time_curve.py                       # 5, 10 and 20 minutes, ~45 min on 2 cores
    python benchmarks/training_time_curve.py --minutes 5 10 20 40

Each point is a full `cpu` run with a time budget (`scripts/train.py --preset cpu --minutes M`: one step
is timed and the run planned once, so its learning-rate decay fits M minutes) in RUNS_DIR/<M>min; a
folder that already holds a finished run is reused. Every run is then sampled with the
preset's current sampler settings from the same noise and scored with the shipped classifier (N = 1,000).
Writes RUNS_DIR/time_curve.json and time_curve.png: FD and confident share against minutes, and a row of
samples for each run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import helpers  # noqa: F401  (sets the GPU-memory variables before TensorFlow / JAX start)


def train_if_missing(minutes: float, folder: Path, data_dir, manual_dir) -> None:
    """Train the `cpu` preset for `minutes` into `folder` unless a finished run is there."""
    from helpers.config import get_config
    from helpers.runs import train_run

    if (folder / "summary.json").is_file():
        print(f"{folder}: reusing the finished run")
        return
    print(f"{folder}: training the cpu preset for {minutes:g} minutes", flush=True)
    train_run(get_config("cpu", minutes=minutes), folder, data_dir=data_dir, manual_dir=manual_dir, evaluate=False)


def score_run(folder: Path, num_samples: int, data_dir, manual_dir) -> dict:
    """Sample a run with the `cpu` preset's sampler settings (seed 0) and score the samples."""
    import jax
    import numpy as np

    from helpers.config import PRESETS
    from helpers.metrics import get_evaluator
    from helpers.runs import autoguidance_of, draw_samples, load_run

    cfg, state = load_run(folder)
    preset = PRESETS["cpu"]
    sampler = {k: getattr(preset, k) for k in ("sampler", "sample_steps", "eta", "autoguidance_scale",
                                                "autoguidance_interval")}
    cfg = cfg.replace(**sampler)
    x = np.asarray(draw_samples(cfg, state, jax.random.key(0), num_samples, autoguidance=autoguidance_of(cfg, state)))
    figures = get_evaluator(data_dir, manual_dir).evaluate(x)
    summary = json.loads((folder / "summary.json").read_text())
    return {"minutes": cfg.minutes, "steps": summary["steps"], "train_seconds": summary["train_seconds"],
            "images_per_s": summary["images_per_s"], "machine": summary["machine"], "sampler": sampler,
            "fd": round(figures["frechet_distance"], 2), "confident": figures["confident_share"],
            "min_class": figures["min_class_share"], "max_class": figures["max_class_share"],
            "samples": x[:12].tolist()}


def plot(points: list[dict], path: Path) -> None:
    """Two panels of quality against minutes, then one row of 12 samples per run."""
    import matplotlib.pyplot as plt
    import numpy as np

    from helpers.data import from_model_range

    fig = plt.figure(figsize=(9, 3.2 + 0.9 * len(points)))
    grid = fig.add_gridspec(1 + len(points), 2, height_ratios=[3.2] + [0.9] * len(points))
    minutes = [p["minutes"] for p in points]
    for col, (key, label) in enumerate((("fd", "FD (lower: better)"),
                                        ("confident", "share confident (> 0.9)"))):
        ax = fig.add_subplot(grid[0, col])
        ax.plot(minutes, [p[key] for p in points], marker="o")
        ax.set(xlabel="training minutes (cpu preset)", ylabel=label, xticks=minutes)
        ax.grid(alpha=0.3)
    for row, p in enumerate(points, start=1):
        ax = fig.add_subplot(grid[row, :])
        images = from_model_range(np.asarray(p["samples"]), crop=True)[..., 0]
        ax.imshow(np.concatenate(list(images), axis=1), cmap="gray")
        ax.set_axis_off()
        ax.set_title(f"{p['minutes']:g} min, {p['steps']:,} steps: FD {p['fd']:.1f}, {p['confident']:.0%} confident",
                     fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 20])
    p.add_argument("--runs-dir", default="runs/time-curve")
    p.add_argument("--n", type=int, default=1000, help="samples per run (FD depends on N: keep it fixed)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--manual-dir", default=None)
    args = p.parse_args(argv)
    if min(args.minutes) <= 0 or args.n < 2:
        p.error("--minutes must be positive and --n at least 2 (FD needs a covariance)")

    runs_dir = Path(args.runs_dir)
    points = []
    for minutes in sorted(args.minutes):
        folder = runs_dir / f"{minutes:g}min"
        train_if_missing(minutes, folder, args.data_dir, args.manual_dir)
        points.append(score_run(folder, args.n, args.data_dir, args.manual_dir))
        print(f"{minutes:g} min: {points[-1]['steps']:,} steps, FD {points[-1]['fd']:.2f}, "
              f"{points[-1]['confident']:.1%} confident", flush=True)
    (runs_dir / "time_curve.json").write_text(json.dumps(points))
    plot(points, runs_dir / "time_curve.png")
    print(f"wrote {runs_dir / 'time_curve.json'} and {runs_dir / 'time_curve.png'}")
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu()  # before JAX starts; may restart this script once (helpers.environment)
    raise SystemExit(main())
