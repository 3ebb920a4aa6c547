"""Sample from a trained run: a PNG grid and a .npy of N images, optionally the reverse trajectory.

    python scripts/sample.py runs/cpu --n 64 --sampler ddim --steps 50
    python scripts/sample.py runs/cpu --sampler ddpm --trajectory     # + a strip and an animated GIF
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402,F401
from _cli import fail  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder written by scripts/train.py")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default=None, help="default: the run's sampler")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the run's)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta in [0, 1] (0: deterministic)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="class-conditional runs: classifier-free guidance w (default: the run's); labels 0-9 in turn")
    p.add_argument("--autoguidance-scale", type=float, default=None,
                   help="autoguidance w with the run's guide model (default: the run's; 1 turns it off)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--trajectory", action="store_true", help="also write a strip and a GIF of the reverse process")
    p.add_argument("--out", default=None, help="output prefix (default: RUN_DIR/sample-<sampler>-<steps>)")
    args = p.parse_args(argv)
    if args.n <= 0:
        fail(f"--n must be positive, got {args.n}.")

    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    from helpers.checkpoints import CheckpointError, load_run
    from helpers.plotting import plot_samples, plot_trajectory, save_trajectory_gif, use_headless_backend_if_needed

    use_headless_backend_if_needed()
    try:
        cfg, trainer = load_run(args.run_dir)
        sampler = args.sampler or cfg.sampler
        steps = args.steps or cfg.sample_steps
        eta = cfg.eta if args.eta is None else args.eta
        opts = dict(sampler=sampler, steps=steps, eta=eta, return_trajectory=args.trajectory)
        if args.guidance_scale is not None:  # conditional runs sample labels 0-9 in turn (Trainer.sample)
            if not cfg.model.num_classes:
                raise ValueError("--guidance-scale needs a class-conditional run (trained with --num-classes).")
            cfg.replace(guidance_scale=args.guidance_scale).validate()  # the config's own checks
            opts["guidance_scale"] = args.guidance_scale
        if args.autoguidance_scale is not None:
            opts["autoguidance_scale"] = args.autoguidance_scale
        t0 = time.perf_counter()
        result = trainer.sample(jax.random.key(args.seed), args.n, use_ema=not args.raw, **opts)
    except (ValueError, CheckpointError) as err:
        fail(str(err))
    x, traj = (result if args.trajectory else (result, None))
    x = np.asarray(x)
    seconds = time.perf_counter() - t0
    label = f"{sampler}-{steps if sampler == 'ddim' else cfg.num_timesteps}"
    prefix = Path(args.out) if args.out else Path(args.run_dir) / f"sample-{label}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    np.save(f"{prefix}.npy", x)
    weights = "raw" if args.raw else "EMA"
    plt.close(plot_samples(x, title=f"{label.upper()} ({weights} weights, seed {args.seed})", path=f"{prefix}.png"))
    written = [f"{prefix}.png", f"{prefix}.npy"]
    if traj is not None:
        xs, _, pairs = traj
        k = min(8, args.n)
        plt.close(plot_trajectory(np.asarray(xs)[:, :k], pairs, path=f"{prefix}-trajectory.png"))
        save_trajectory_gif(np.asarray(xs)[:, :16], f"{prefix}-trajectory.gif")
        written += [f"{prefix}-trajectory.png", f"{prefix}-trajectory.gif"]
    print(f"{args.n} samples ({label}, {weights} weights, step {trainer.step}) in {seconds:.1f} s: " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
