"""Measure training and sampling speed: one JSON line and a readable table.

    python benchmarks/benchmark.py --preset cpu
    python benchmarks/benchmark.py --preset paper --batch 128 --steps 5 --skip-ddpm
    python benchmarks/benchmark.py --preset paper --set dtype=bfloat16      # GPU: bf16 mixed precision
    python benchmarks/benchmark.py --preset paper --set hidden_dims=32,64,128 --set num_res_blocks=1

Train step: images/s after compilation, compile time, ms per step, FLOPs per step from XLA's cost
analysis and the GFLOP/s achieved, next to a large matmul measured in the same run (what the
machine can do). Sampling: DDIM-100 and DDPM-1000 wall time for 64 samples (compilation
excluded). Also the epoch time and the projected time of the config's whole run (its planned steps)
at this speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import helpers  # noqa: F401  (sets the GPU-memory variables before TensorFlow / JAX start)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_set(text: str) -> tuple[str, object]:
    """FIELD=VALUE of `--set`: a comma list becomes a tuple of ints, a number a number, else the text."""
    name, _, value = text.partition("=")
    if "," in value:
        return name, tuple(int(v) for v in value.split(","))
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    return name, value


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n x n float32 matmul: what this machine's JAX can do at best."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        r = f(a)
    r.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def time_train_step(cfg, images, labels, steps: int) -> dict:
    """Compile time, seconds per step and XLA's FLOP count of the run's step (the training loop's own
    `run_chunk`, its batches gathered on the device)."""
    import jax
    import numpy as np
    from flax import nnx

    from helpers.distributed import data_mesh
    from helpers.training import BatchFeed, TrainState, compiled_train_step, make_plan, place_state, run_chunk

    mesh = data_mesh()
    state = place_state(TrainState(cfg), mesh)
    feed, plan = BatchFeed(cfg, state, images, labels, mesh), make_plan(cfg, len(images), total_steps=10**6)
    t = time.perf_counter()
    jax.block_until_ready(run_chunk(state, feed, plan, cfg, 0, 1))  # compiles
    compile_s = time.perf_counter() - t
    jax.block_until_ready(run_chunk(state, feed, plan, cfg, 1, 3))  # warm-up
    t = time.perf_counter()
    jax.block_until_ready(run_chunk(state, feed, plan, cfg, 3, 3 + steps))
    step_s = (time.perf_counter() - t) / steps
    graphdef, pure = nnx.split(state)
    x0, labels, mask = feed.batch(0)
    lowered = compiled_train_step.lower(graphdef, pure, x0, labels, mask, np.int32(0), np.float32(cfg.learning_rate),
                                        cfg=cfg)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"compile_s": compile_s, "step_s": step_s, "flops": float((cost or {}).get("flops", float("nan"))),
            "state": state}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None)
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    p.add_argument("--steps", type=int, default=10, help="timed train steps")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--skip-ddpm", action="store_true", help="skip the 1000-step DDPM timing")
    p.add_argument("--skip-sampling", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set dtype=bfloat16 --set hidden_dims=32,64,128")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np

    from helpers.config import QUICK_SAMPLE_STEPS, QUICK_STEPS, get_config, quick, quick_cap
    from helpers.environment import machine_description
    from helpers.sampling import sample
    from helpers.training import make_plan, noise_schedule
    from helpers.unet import count_params

    try:
        overrides = dict(parse_set(item) for item in args.set) | ({"batch_size": args.batch} if args.batch else {})
        cfg = get_config(args.preset, **overrides)
    except (ValueError, TypeError) as err:
        fail(str(err))
    if args.steps <= 0 or args.samples <= 0:
        fail("--steps and --samples must be positive.")
    # a quick check (helpers.config.QUICK_VARIABLE) runs the code, not the timings: a few of everything, no DDPM
    args.steps, args.samples, ddim_steps = quick_cap(args.steps, QUICK_STEPS), quick_cap(args.samples), quick_cap(
        100, QUICK_SAMPLE_STEPS)
    args.skip_ddpm = args.skip_ddpm or quick()
    images = np.random.default_rng(0).integers(0, 256, size=(max(cfg.batch_size * 4, 1024), 28, 28, 1), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 10, size=len(images))
    timing = time_train_step(cfg, images, labels, args.steps)
    model = timing["state"].ema.model
    step_s, images_per_s = timing["step_s"], cfg.batch_size / timing["step_s"]
    result = {
        "preset": cfg.preset, "machine": machine_description(), "batch": cfg.batch_size, "dtype": cfg.model.dtype,
        "parameters": count_params(model), "images_per_s": round(images_per_s, 2),
        "ms_per_step": round(step_s * 1000, 1), "compile_s": round(timing["compile_s"], 1),
        "gflop_per_step": round(timing["flops"] / 1e9, 2), "achieved_gflops": round(timing["flops"] / step_s / 1e9, 1),
        "matmul_gflops": round(matmul_gflops(), 1), "epoch_s": round(60_000 / images_per_s, 1),
        "projected_run_min": round(make_plan(cfg, 60_000).total_steps * step_s / 60, 1),
    }
    samplers = [] if args.skip_sampling else [(f"ddim{ddim_steps}", dict(sampler="ddim", steps=ddim_steps))] + (
        [] if args.skip_ddpm else [("ddpm1000", dict(sampler="ddpm"))])
    for name, options in samplers:
        jax.block_until_ready(sample(model, noise_schedule(cfg), jax.random.key(0), args.samples, **options))
        t = time.perf_counter()
        jax.block_until_ready(sample(model, noise_schedule(cfg), jax.random.key(1), args.samples, **options))
        result[f"{name}_s_for_{args.samples}"] = round(time.perf_counter() - t, 2)
    print(json.dumps(result))
    width = max(len(k) for k in result)
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu()  # before JAX starts; may restart this script once (helpers.environment)
    sys.exit(main())
