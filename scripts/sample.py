"""Sample from a trained run: a PNG grid and a .npy of N images, optionally the reverse trajectory.

    python scripts/sample.py runs/cpu --n 64 --sampler ddim --steps 50
    python scripts/sample.py runs/cpu --sampler ddpm --trajectory     # + a strip and an animated GIF
    python scripts/sample.py runs/flow --sampler heun --steps 10      # a flow-matching run: euler or heun
    python scripts/sample.py runs/cpu --ema-length 0.07 --guide-ema-length 0.1   # EMA lengths chosen now
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import helpers  # noqa: F401  (sets the GPU-memory variables before TensorFlow / JAX start)
from _cli import fail


def _interval(text: str):
    """'t_low,t_high' -> (t_low, t_high); 'all' -> every step (no interval)."""
    if text.lower() in ("all", "none"):
        return "all"
    low, high = (int(v) for v in text.split(","))
    return low, high


def parse_args(argv=None) -> argparse.Namespace:
    from helpers.sampling import SAMPLERS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder written by scripts/train.py")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the run's sampler")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (not ddpm; default: the run's): at most one per timestep from "
                        "lambda = -4.8 on, 995 of the cosine schedule's 1,000")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta in [0, 1] (0: deterministic; default: the run's)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="class-conditional runs: classifier-free guidance w (default: the run's); labels 0-9 in turn")
    p.add_argument("--autoguidance-scale", type=float, default=None,
                   help="autoguidance w with the run's guide model (default: the run's; 1 turns it off)")
    p.add_argument("--autoguidance-interval", type=_interval, default=None, metavar="T_LOW,T_HIGH",
                   help="guide only at these timesteps, e.g. 100,700, or 'all' (default: the run's)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--ema-length", type=float, default=None, metavar="SIGMA_REL",
                   help="sample from the post-hoc EMA of this length (e.g. 0.05; a run trained with --ema-lengths)")
    p.add_argument("--guide-ema-length", type=float, default=None, metavar="SIGMA_REL",
                   help="autoguidance guide: the post-hoc EMA of this length at --guide-step")
    p.add_argument("--guide-step", type=int, default=None,
                   help="the step of that guide, one with an EMA snapshot (default: the nearest to the run's guide)")
    p.add_argument("--trajectory", action="store_true", help="also write a strip and a GIF of the reverse process")
    p.add_argument("--out", default=None, help="output prefix (default: RUN_DIR/sample-<sampler>-<steps>)")
    return p.parse_args(argv)


def sampling_config(cfg, args):
    """The run's config with this command's sampling flags, checked by `Config.validate` and (the sampler's
    settings) by `helpers.sampling.make_sampler`."""
    if args.guidance_scale is not None and not cfg.model.num_classes:
        raise ValueError("--guidance-scale needs a class-conditional run (trained with --num-classes).")
    from helpers.config import QUICK_SAMPLE_STEPS, quick_cap

    steps = None if args.steps is None else quick_cap(args.steps, QUICK_SAMPLE_STEPS)  # a quick check: a few
    flags = {"sampler": args.sampler, "sample_steps": steps, "eta": args.eta, "num_samples": quick_cap(args.n),
             "guidance_scale": args.guidance_scale, "autoguidance_scale": args.autoguidance_scale,
             "autoguidance_interval": args.autoguidance_interval}
    cfg = cfg.replace(**{k: v for k, v in flags.items() if v is not None})
    from helpers.runs import sampler_of

    cfg = (cfg.replace(autoguidance_interval=None) if cfg.autoguidance_interval == "all" else cfg).validate()
    sampler_of(cfg)
    return cfg


def posthoc_weights(args, state) -> str:
    """Put the post-hoc EMAs asked for into `state` (helpers.posthoc_ema); returns a line on each, or ''."""
    from helpers.posthoc_ema import snapshot_files
    from helpers.runs import use_posthoc_ema

    lines = []
    if args.ema_length is not None:
        made = use_posthoc_ema(args.run_dir, state, args.ema_length)
        lines.append(f"model: post-hoc EMA {args.ema_length:g} at step {made['step']} from {made['snapshots']} "
                     f"snapshots (profile error {made['profile_error']:.1%})")
    if args.guide_ema_length is not None:
        steps, own = list(snapshot_files(args.run_dir)) or [0], state.guide.step if state.guide is not None else 0
        at = args.guide_step if args.guide_step is not None else min(steps, key=lambda s: abs(s - own))
        made = use_posthoc_ema(args.run_dir, state, args.guide_ema_length, at, guide=True)
        lines.append(f"guide: post-hoc EMA {args.guide_ema_length:g} at step {made['step']} from {made['snapshots']} "
                     f"snapshots (profile error {made['profile_error']:.1%})")
    return "".join(line + "\n" for line in lines)


def write_outputs(x, trajectory, prefix: Path, title: str) -> list[str]:
    """samples .npy and .png, and with a trajectory its strip and GIF; returns the paths written."""
    import matplotlib.pyplot as plt
    import numpy as np

    from helpers.losses import FLOW_TIME_SCALE
    from helpers.plotting import plot_samples, plot_trajectory, save_trajectory_gif

    np.save(f"{prefix}.npy", x)
    plt.close(plot_samples(x, title=title, path=f"{prefix}.png"))
    written = [f"{prefix}.png", f"{prefix}.npy"]
    if trajectory is not None:
        xs, _, pairs = trajectory
        title = "Reverse process"
        if np.asarray(pairs).dtype.kind == "f":  # a flow-matching run: label with the time its network sees
            pairs, title = np.asarray(pairs) * FLOW_TIME_SCALE, f"Flow ODE (t = {FLOW_TIME_SCALE:g} x flow time)"
        plt.close(plot_trajectory(np.asarray(xs)[:, :8], pairs, title=title, path=f"{prefix}-trajectory.png"))
        save_trajectory_gif(np.asarray(xs)[:, :16], f"{prefix}-trajectory.gif")
        written += [f"{prefix}-trajectory.png", f"{prefix}-trajectory.gif"]
    return written


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np

    from helpers.checkpoints import CheckpointError
    from helpers.runs import autoguidance_of, draw_samples, load_run, sampler_of

    try:
        cfg, state = load_run(args.run_dir)
        cfg = sampling_config(cfg, args)
        weights_note = posthoc_weights(args, state)
        guidance = autoguidance_of(cfg, state)
        label = f"{cfg.sampler}-{sampler_of(cfg).steps}"
        prefix = Path(args.out) if args.out else Path(args.run_dir) / f"sample-{label}"
        prefix.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = draw_samples(cfg, state, jax.random.key(args.seed), cfg.num_samples, autoguidance=guidance,
                              use_ema=not args.raw, return_trajectory=args.trajectory)
        x, trajectory = result if args.trajectory else (result, None)
        x = np.asarray(x)
        seconds = time.perf_counter() - t0
        weights = "raw" if args.raw else f"post-hoc EMA {args.ema_length:g}" if args.ema_length else "EMA"
        written = write_outputs(x, trajectory, prefix, f"{label.upper()} ({weights} weights, seed {args.seed})")
    except (ValueError, CheckpointError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot write {err.filename}: {err.strerror}. Choose another --out.")
    print(weights_note, end="")
    print(f"{len(x)} samples ({label}, {weights} weights, step {state.step}) in {seconds:.1f} s: " + ", ".join(written))
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu()  # before JAX starts; may restart this script once (helpers.environment)
    sys.exit(main())
