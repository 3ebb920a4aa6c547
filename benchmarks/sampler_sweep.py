"""Quality per network evaluation: score samplers on one trained run (FD, confident share, class shares).

    python benchmarks/sampler_sweep.py runs/cpu                      # the full grid, ~30 min on 2 cores
    python benchmarks/sampler_sweep.py runs/cpu --only dpmpp_2m_sde  # one sampler's rows
    python benchmarks/sampler_sweep.py runs/cpu --seeds 3 --only "ddim eta=1 100 all" "ddim eta=1 50 all"
    python benchmarks/sampler_sweep.py runs/cpu --seeds 3 --only "dpmpp_2m_sde 50 all" --autoguidance-scale 2.5
    python benchmarks/sampler_sweep.py runs/cpu --seeds 3 --only "dpmpp_2m_sde 50 all" --guide-step 2000
    python benchmarks/sampler_sweep.py runs/cpu --seeds 4 --settings "dpmpp_2m_sde 20 interval w=2.5" "ddim eta=1 30 off"

Each setting draws N samples (default 1,000, the main job's N) from the same starting noise and scores
them with the shipped classifier; `--seeds 3` repeats each with three noise seeds, so the noise of each
figure is known. `--guide-step S` guides with the EMA weights of the run's kept checkpoint of step S instead
of the run's own guide (the guide's age). Results go to OUT.json (default RUN_DIR/sampler_sweep; merged with earlier rows) with
the run, machine and commit, and a plot of FD against network evaluations, one line per sampler and
guidance setting, to OUT.png. `--settings` names settings outside the grid: "SAMPLER [eta=E] STEPS GUIDANCE
[w=W]", GUIDANCE one of the INTERVALS below.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import helpers  # noqa: F401  (sets the GPU-memory variables before TensorFlow / JAX start)

# Autoguidance only at 167 <= t <= 785 of the cosine schedule: EDM noise levels 0.28 < sigma <= 2.9, the
# interval of Kynkaanniemi et al. 2024 (sigma = sqrt((1 - ab) / ab)); "high" / "upper": t >= 167 / t >= 400,
# the noisier steps only; "all": every step; "off": none.
INTERVALS = {"all": None, "interval": (167, 785), "high": (167, 999), "upper": (400, 999), "off": None}

# (sampler, eta, steps, guidance), the most telling first: today's default, then the cheaper candidates
GRID = [("ddim", 1.0, 100, "all"), ("ddim", 1.0, 100, "interval"), ("ddim", 1.0, 50, "interval"),
        ("dpmpp_2m_sde", 0.0, 25, "interval"), ("dpmpp_2m_sde", 0.0, 25, "all"), ("dpmpp_2m_sde", 0.0, 50, "interval"),
        ("dpmpp_2m", 0.0, 25, "interval"), ("ddim", 1.0, 50, "all"), ("ddim", 1.0, 25, "interval"),
        ("ddim", 1.0, 50, "high"), ("ddim", 1.0, 50, "upper"), ("ddim", 1.0, 25, "all"), ("dpmpp_2m_sde", 0.0, 10, "all"),
        ("dpmpp_2m_sde", 0.0, 50, "all"), ("dpmpp_2m_sde", 0.0, 35, "all"), ("dpmpp_2m", 0.0, 25, "all"), ("ddim", 0.0, 50, "all"),
        ("ddim", 1.0, 100, "off"), ("dpmpp_2m_sde", 0.0, 50, "off"), ("ddpm", 1.0, 1000, "off"),
        ("ddpm", 1.0, 1000, "all")]


def setting_name(sampler: str, eta: float, steps: int, guidance: str, scale: float | None = None) -> str:
    """E.g. 'ddim eta=1 100 interval' (eta is named for DDIM only; the guidance scale w only when the
    sweep sets one other than the run's own)."""
    return f"{sampler}{f' eta={eta:g}' if sampler == 'ddim' else ''} {steps} {guidance}" + (
        f" w={scale:g}" if scale is not None and guidance != "off" else "")


def parse_setting(text: str) -> tuple:
    """'dpmpp_2m_sde 20 interval w=2.5' -> (sampler, eta, steps, guidance, w or None); ValueError if malformed."""
    words = text.split()
    options = dict(w.split("=", 1) for w in words if "=" in w)
    plain = [w for w in words if "=" not in w]
    if len(plain) != 3 or plain[2] not in INTERVALS or not plain[1].isdigit() or set(options) - {"eta", "w"}:
        raise ValueError(f"{text!r} is not 'SAMPLER [eta=E] STEPS GUIDANCE [w=W]' (GUIDANCE: {', '.join(INTERVALS)})")
    return (plain[0], float(options.get("eta", 0.0)), int(plain[1]), plain[2],
            float(options["w"]) if "w" in options else None)


def score(run, sampler, eta, steps, guidance, seed, n, data_dir, manual_dir, scale=None) -> dict:
    """Sample N images of `run` = (cfg, state) with one setting (guidance scale `scale`, default the run's)
    and score them; returns the figures with NFE and seconds."""
    import jax
    import numpy as np

    from helpers.metrics import get_evaluator
    from helpers.runs import autoguidance_of, draw_samples
    from helpers.sampling import make_sampler, network_evaluations
    from helpers.training import noise_schedule

    guided = guidance != "off"
    cfg, state = run[0].replace(autoguidance_interval=INTERVALS[guidance]), run[1]
    w = (cfg.autoguidance_scale if scale is None else scale) if guided else 1.0
    t0 = time.perf_counter()
    x = np.asarray(draw_samples(cfg, state, jax.random.key(seed), n, sampler=sampler, steps=steps, eta=eta,
                                autoguidance=autoguidance_of(cfg, state, w)))
    seconds = time.perf_counter() - t0
    figures = get_evaluator(data_dir, manual_dir).evaluate(x)
    nfe = network_evaluations(make_sampler(noise_schedule(cfg), sampler, steps, eta), INTERVALS[guidance], guided)
    return {"setting": setting_name(sampler, eta, steps, guidance, scale), "sampler": sampler, "eta": eta,
            "steps": steps, "guidance": guidance, "w": w, "seed": seed, "n": n, "nfe": nfe, "seconds": round(seconds, 1),
            "fd": round(figures["frechet_distance"], 2), "confident": figures["confident_share"],
            "min_class": figures["min_class_share"], "max_class": figures["max_class_share"]}


def plot(rows: list[dict], path: Path, title: str) -> None:
    """FD against network evaluations: one line per sampler and guidance (mean over seeds, bars: range)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5.5))
    line_of = lambda r: (r["sampler"], r["eta"], r["guidance"], r.get("w"), r.get("guide_step"))  # noqa: E731
    lines = sorted({line_of(r) for r in rows}, key=str)
    colors = dict(zip(["all", "high", "upper", "interval", "off"], plt.cm.tab10.colors))
    styles = {("ddim", 0.0): ("s", ":"), ("ddim", 1.0): ("o", "-"), ("ddpm", 1.0): ("*", "-"),
              ("dpmpp_2m", 0.0): ("^", "--"), ("dpmpp_2m_sde", 0.0): ("D", "-.")}
    scales = {r.get("w") for r in rows if r["guidance"] != "off"}
    for sampler, eta, guidance, w, guide_step in lines:
        mine = [r for r in rows if line_of(r) == (sampler, eta, guidance, w, guide_step)]
        nfes = sorted({r["nfe"] for r in mine})
        fds = [[r["fd"] for r in mine if r["nfe"] == k] for k in nfes]
        mean = np.array([np.mean(f) for f in fds])
        err = np.array([[m - min(f), max(f) - m] for m, f in zip(mean, fds)]).T
        label = f"{sampler}{f' eta={eta:g}' if sampler == 'ddim' else ''}, guidance {guidance}" + (
            f" w={w:g}" if len(scales) > 1 and guidance != "off" else "") + (
            f", guide from step {guide_step:,}" if guide_step is not None else "")
        marker, style = styles[(sampler, eta)]
        ax.errorbar(nfes, mean, yerr=err, marker=marker, linestyle=style, color=colors[guidance], capsize=3, label=label,
                    alpha=1.0 if w in (None, 1.0, 2.0) else 0.6)
    ax.set(xscale="log", yscale="log", xlabel="network evaluations per sample", title=title,
           ylabel="Frechet distance (log scale, lower is better)")
    low, high = ax.get_xlim()
    ticks = [k for k in (10, 20, 50, 100, 200, 500, 1000, 2000) if low <= k <= high]
    ax.set_xticks(ticks, [str(k) for k in ticks])
    low, high = ax.get_ylim()
    ticks = [k for k in (10, 20, 30, 50, 100, 200, 300, 500) if low <= k <= high]
    ax.set_yticks(ticks, [str(k) for k in ticks])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(run_dir: str, n: int) -> str:
    return f"{Path(run_dir).name}: {n:,} samples per point (mean of the seeds; bars: their range)"


def parse_args(argv):
    """The flags, checked before any run is loaded; returns (parser, args, grid)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder written by scripts/train.py, with a guide model")
    p.add_argument("--n", type=int, default=1000, help="samples per setting (FD depends on N: keep it fixed)")
    p.add_argument("--seeds", type=int, default=1, help="noise seeds per setting")
    p.add_argument("--only", nargs="+", default=None, help="settings whose name contains one of these texts")
    p.add_argument("--settings", nargs="+", default=None, metavar="SETTING",
                   help="settings outside the grid, e.g. 'dpmpp_2m_sde 20 interval w=2.5'")
    p.add_argument("--autoguidance-scale", type=float, default=None,
                   help="guidance scale w for the guided settings (default: the run's own)")
    p.add_argument("--guide-step", type=int, default=None,
                   help="guide with the EMA weights of this kept checkpoint (default: the run's own guide)")
    p.add_argument("--out", default=None, help="output prefix (default: RUN_DIR/sampler_sweep)")
    p.add_argument("--plot-only", action="store_true", help="redraw OUT.png from OUT.json, sampling nothing")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--manual-dir", default=None)
    args = p.parse_args(argv)
    if args.n < 2 or args.seeds < 1:
        p.error("--n must be at least 2 (FD needs a covariance) and --seeds at least 1")
    grid = [(*s, None) for s in GRID if args.only is None or any(text in setting_name(*s) for text in args.only)]
    if args.settings:
        try:
            grid = [parse_setting(text) for text in args.settings]
        except ValueError as err:
            p.error(str(err))
    if not grid:
        p.error(f"--only matches no setting; the settings are: {', '.join(setting_name(*s) for s in GRID)}")
    return p, args, grid


def load_for_sweep(p, args, grid):
    """The run's (cfg, state), its guide replaced by the EMA weights of `--guide-step` if given; a usage
    error when the run, the guide or a setting's interval does not fit."""
    from helpers.checkpoints import CheckpointError
    from helpers.runs import load_run

    try:
        cfg, state = load_run(args.run_dir)
        if args.guide_step is not None and state.guide is not None:
            _, earlier = load_run(args.run_dir, step=args.guide_step)
            state.guide.take(earlier.ema.model, args.guide_step)
    except (ValueError, CheckpointError) as err:
        p.error(str(err))
    try:  # every scale asked for, by the config's own rule
        for scale in {s[4] for s in grid} | {args.autoguidance_scale}:
            cfg.replace(autoguidance_scale=cfg.autoguidance_scale if scale is None else scale).validate()
    except ValueError as err:
        p.error(str(err))
    if any(s[3] in ("interval", "high", "upper") for s in grid) and cfg.num_timesteps != 1000:
        p.error(f"the guidance intervals are timesteps of a 1,000-step schedule; this run has "
                f"{cfg.num_timesteps}: choose settings with 'all' or 'off' (--only)")
    if (state.guide is None or state.guide.step < 0) and any(s[3] != "off" for s in grid):
        p.error(f"{args.run_dir} has no guide (trained without --guide-fraction, or stopped before its guide was "
                f"taken): choose the 'off' settings (--only off)")
    return cfg, state


def main(argv=None) -> int:
    p, args, grid = parse_args(argv)
    out = Path(args.out or Path(args.run_dir) / "sampler_sweep").with_suffix(".json")
    if args.plot_only:
        if not out.is_file():
            p.error(f"--plot-only redraws {out}, which does not exist: run the sweep first (or pass its --out)")
        saved = json.loads(out.read_text())
        plot([r for r in saved["rows"] if r["n"] == args.n], out.with_suffix(".png"), _title(saved["run"], args.n))
        return 0
    from helpers.environment import machine_description

    run = load_for_sweep(p, args, grid)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"run": args.run_dir, "steps": run[1].step, "machine": machine_description(), "commit": commit}
    for setting in grid:
        for seed in range(args.seeds):
            scale = setting[4] if setting[4] is not None else args.autoguidance_scale
            row = score(run, *setting[:4], seed, args.n, args.data_dir, args.manual_dir, scale)
            if args.guide_step is not None and setting[3] != "off":
                row.update(setting=f"{row['setting']} guide={args.guide_step}", guide_step=args.guide_step)
            rows = [r for r in rows if (r["setting"], r["seed"], r["n"]) != (row["setting"], seed, args.n)] + [row]
            out.write_text(json.dumps({**record, "rows": rows}, indent=1))
            print(f"{row['setting']:28s} seed {seed}: {row['nfe']:5d} NFE {row['seconds']:6.1f} s  FD {row['fd']:6.2f}  "
                  f"confident {row['confident']:.1%}  classes {row['min_class']:.1%}-{row['max_class']:.1%}", flush=True)
    plot([r for r in rows if r["n"] == args.n], out.with_suffix(".png"), _title(args.run_dir, args.n))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu()  # before JAX starts; may restart this script once (helpers.environment)
    raise SystemExit(main())
