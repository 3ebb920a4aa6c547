"""Which weights to sample from: quality against the EMA length of the model and of the autoguidance guide,
reconstructed after training from a run's post-hoc EMA snapshots (helpers.posthoc_ema).

    python benchmarks/ema_sweep.py runs/cpu --model 0.03 0.05 0.07 0.10 0.15 --seeds 3
    python benchmarks/ema_sweep.py runs/cpu --guide 0.05 0.10 0.20 --guide-steps 1000 1500 --seeds 3
    python benchmarks/ema_sweep.py runs/cpu --model 0.07 --guide 0.10 --guide-steps 1500 --seeds 4  # + the pair

Every setting draws N samples (default 1,000) with the run's own sampler and guidance scale, once per
sampling seed (the run's own weights are always drawn too), and is scored twice: against 10,000 training
digits (the reference to choose on) and against the 10,000 test digits (the reference to report). "own"
is the run's own EMA or guide. The rows go to OUT.json (default RUN_DIR/ema_sweep; merged with earlier
rows), a plot to OUT.png, and a table of mean and range per setting is printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import helpers  # noqa: F401  (sets the GPU-memory variables before TensorFlow / JAX start)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder trained with --ema-lengths (the cpu preset tracks 0.05 and 0.10)")
    p.add_argument("--model", type=float, nargs="*", default=[], metavar="SIGMA_REL",
                   help="EMA lengths for the model (with the run's own guide)")
    p.add_argument("--guide", type=float, nargs="*", default=[], metavar="SIGMA_REL",
                   help="EMA lengths for the guide (with the run's own model; one --model and one guide: also the pair)")
    p.add_argument("--guide-steps", type=int, nargs="*", default=[], help="the guide's steps (snapshot steps)")
    p.add_argument("--seeds", type=int, default=3, help="sampling seeds per setting")
    p.add_argument("--n", type=int, default=1000, help="samples per draw (FD depends on N: keep it fixed)")
    p.add_argument("--out", default=None, help="output prefix (default: RUN_DIR/ema_sweep)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--manual-dir", default=None)
    args = p.parse_args(argv)
    if args.n < 2 or args.seeds < 1:
        p.error("--n must be at least 2 (FD needs a covariance) and --seeds at least 1")
    if bool(args.guide) != bool(args.guide_steps):
        p.error("--guide and --guide-steps go together: the guide's lengths and the steps to take it at")
    return p, args


def settings(args) -> list[tuple]:
    """(model length, guide length, guide step), None for the run's own: the run's own weights first, each
    model length with the run's guide, each guide with the run's model, and with one of each, the pair."""
    guides = [(g, s) for g in args.guide for s in args.guide_steps]
    rows = [(None, None, None)] + [(m, None, None) for m in args.model] + [(None, g, s) for g, s in guides]
    if len(args.model) == 1 and len(guides) == 1:
        rows.append((args.model[0], *guides[0]))
    return list(dict.fromkeys(rows))


def name(model, guide, step) -> str:
    return f"model {'own' if model is None else f'{model:g}'}, guide {'own' if guide is None else f'{guide:g}@{step}'}"


def weights_of(run_dir, setting):
    """The run's (cfg, state) with one setting's model and guide weights."""
    from helpers.runs import load_run, use_posthoc_ema

    cfg, state = load_run(run_dir)
    model, guide, step = setting
    if model is not None:
        use_posthoc_ema(run_dir, state, model)
    if guide is not None:
        use_posthoc_ema(run_dir, state, guide, step, guide=True)
    return cfg, state


def score(run, setting, seed: int, n: int, evaluator) -> dict:
    """Draw n samples of `run` = (cfg, state) with one setting's weights; score them against both references."""
    import jax
    import numpy as np

    from helpers.runs import autoguidance_of, draw_samples

    (cfg, state), (model, guide, step) = run, setting
    t0 = time.perf_counter()
    x = np.asarray(draw_samples(cfg, state, jax.random.key(seed), n, autoguidance=autoguidance_of(cfg, state)))
    seconds = time.perf_counter() - t0
    f = evaluator.evaluate(x)
    return {"setting": name(*setting), "model": model, "guide": guide, "guide_step": step if guide is not None
            else state.guide.step if state.guide is not None else None, "seed": seed, "n": n,
            "seconds": round(seconds, 1), "fd_train": round(f["frechet_distance_train"], 2),
            "fd_test": round(f["frechet_distance"], 2), "confident": f["confident_share"],
            "min_class": f["min_class_share"], "max_class": f["max_class_share"]}


def summary(rows: list[dict]) -> str:
    """Mean (range) per setting over its seeds, best on the training reference first."""
    import numpy as np

    def cell(values, fmt):
        return f"{fmt(np.mean(values))} ({fmt(min(values))}-{fmt(max(values))})"

    groups = {}
    for r in rows:
        groups.setdefault(r["setting"], []).append(r)
    lines = [f"{'setting':34s} {'seeds':>5s}  {'FD train digits (choose)':>24s}  {'FD test digits (report)':>23s}  "
             f"{'confident':>19s}  classes"]
    for setting, rs in sorted(groups.items(), key=lambda kv: np.mean([r["fd_train"] for r in kv[1]])):
        two = lambda v: f"{v:.1f}"  # noqa: E731
        lines.append(f"{setting:34s} {len(rs):5d}  {cell([r['fd_train'] for r in rs], two):>24s}  "
                     f"{cell([r['fd_test'] for r in rs], two):>23s}  "
                     f"{cell([r['confident'] for r in rs], lambda v: f'{v:.1%}'):>19s}  "
                     f"{min(r['min_class'] for r in rs):.1%}-{max(r['max_class'] for r in rs):.1%}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """FD (training digits) against EMA length, for the model (guide: own) and for each guide step."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = {"model (guide: the run's own)": [r for r in rows if r["model"] is not None and r["guide"] is None]}
    for step in sorted({r["guide_step"] for r in rows if r["guide"] is not None}):
        lines[f"guide at step {step:,} (model: the run's own)"] = [
            r for r in rows if r["guide"] is not None and r["guide_step"] == step and r["model"] is None]
    for label, rs in lines.items():
        key = "model" if label.startswith("model") else "guide"
        lengths = sorted({r[key] for r in rs})
        if not lengths:
            continue
        fds = [[r["fd_train"] for r in rs if r[key] == s] for s in lengths]
        mean = np.array([np.mean(f) for f in fds])
        ax.errorbar(lengths, mean, yerr=[mean - [min(f) for f in fds], [max(f) for f in fds] - mean], marker="o",
                    capsize=3, label=label)
    own = [r["fd_train"] for r in rows if r["model"] is None and r["guide"] is None]
    if own:
        ax.axhspan(min(own), max(own), color="gray", alpha=0.2, label="the run's own EMA and guide (seed range)")
    ax.set(xlabel="EMA length sigma_rel", ylabel="Frechet distance to training digits (lower is better)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p, args = parse_args(argv)
    from helpers.checkpoints import CheckpointError
    from helpers.environment import machine_description
    from helpers.metrics import get_evaluator

    out = Path(args.out or Path(args.run_dir) / "ema_sweep").with_suffix(".json")
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"run": args.run_dir, "machine": machine_description(), "commit": commit}
    from helpers.config import quick, quick_cap

    evaluator = get_evaluator(args.data_dir, args.manual_dir, quick=quick())  # a quick check: small references
    args.n = quick_cap(args.n)
    for setting in settings(args):
        try:
            run = weights_of(args.run_dir, setting)
        except (ValueError, CheckpointError) as err:
            p.error(str(err))
        for seed in range(args.seeds):
            row = score(run, setting, seed, args.n, evaluator)
            rows = [r for r in rows if (r["setting"], r["seed"], r["n"]) != (row["setting"], seed, args.n)] + [row]
            out.write_text(json.dumps({**record, "rows": rows}, indent=1))
            print(f"{row['setting']:34s} seed {seed}: FD train {row['fd_train']:6.2f}  test {row['fd_test']:6.2f}  "
                  f"confident {row['confident']:.1%}  ({row['seconds']:.0f} s)", flush=True)
    mine = [r for r in rows if r["n"] == args.n]
    plot(mine, out.with_suffix(".png"), f"{Path(args.run_dir).name}: N = {args.n:,} per draw (mean; bars: seed range)")
    print(summary(mine))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu()  # before JAX starts; may restart this script once (helpers.environment)
    raise SystemExit(main())
