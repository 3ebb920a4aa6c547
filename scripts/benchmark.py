"""Measure training and sampling speed: one JSON line and a readable table.

    python scripts/benchmark.py --preset cpu
    python scripts/benchmark.py --preset paper --batch 128 --steps 5 --skip-ddpm
    python scripts/benchmark.py --preset paper --dtype bfloat16      # GPU: bf16 mixed precision

Train step: images/s after compilation, compile time, ms per step, FLOPs per step from XLA's cost
analysis and the GFLOP/s achieved, next to a large matmul measured in the same run (what the
machine can do), and the host overhead per step (dispatch time of a step that does no work).
Sampling: DDIM-100 and DDPM-1000 wall time for 64 samples (compilation excluded). Also the epoch
time and the projected time of the config's full run (e.g. 50 epochs for `paper`) at this speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402,F401
from _cli import add_config_flags, fail, overrides_from  # noqa: E402
from helpers.environment import restart_with_huge_pages  # noqa: E402


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None)
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    p.add_argument("--steps", type=int, default=10, help="timed train steps")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--skip-ddpm", action="store_true", help="skip the 1000-step DDPM timing")
    p.add_argument("--skip-sampling", action="store_true")
    add_config_flags(p)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from helpers.config import get_config
    from helpers.runs import machine_description
    from helpers.sampling import sample
    from helpers.training import Trainer
    from helpers.unet import count_params, create_unet

    over = overrides_from(args)
    if args.batch:
        over["batch_size"] = args.batch
    try:
        cfg = get_config(args.preset, **over)
    except ValueError as err:
        fail(str(err))
    if args.steps <= 0:
        fail("--steps must be positive.")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(max(cfg.batch_size * 4, 1024), 28, 28, 1), dtype=np.uint8)
    model = create_unet(cfg.model, seed=0)
    trainer = Trainer(cfg, model, images, total_steps=10**6)

    state = nnx.state((trainer.model, trainer.optimizer, trainer.ema))
    order = trainer.epoch_order(0)
    t = time.perf_counter()
    compiled = trainer._step_fn.lower(state, trainer.images, trainer.labels, order, trainer.step_key,
                                      jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    jax.block_until_ready(trainer.run_chunk(0, 2))  # warm-up
    t = time.perf_counter()
    jax.block_until_ready(trainer.run_chunk(2, args.steps))
    step_s = (time.perf_counter() - t) / args.steps

    # host overhead: time to dispatch one (trivial) jitted call with the same argument tree
    state = nnx.state((trainer.model, trainer.optimizer, trainer.ema))
    noop = jax.jit(lambda s, i, l, o, k, n: n + 1)
    noop(state, trainer.images, trainer.labels, order, trainer.step_key, jnp.int32(0)).block_until_ready()
    t = time.perf_counter()
    for i in range(50):
        r = noop(state, trainer.images, trainer.labels, order, trainer.step_key, jnp.int32(i))
    r.block_until_ready()
    host_ms = (time.perf_counter() - t) / 50 * 1000

    mm = matmul_gflops()
    result = {
        "preset": cfg.preset, "machine": machine_description(), "batch": cfg.batch_size,
        "parameters": count_params(model), "images_per_s": round(cfg.batch_size / step_s, 2),
        "ms_per_step": round(step_s * 1000, 1), "compile_s": round(compile_s, 1),
        "gflop_per_step": round(flops / 1e9, 2), "achieved_gflops": round(flops / step_s / 1e9, 1),
        "matmul_gflops": round(mm, 1), "host_overhead_ms": round(host_ms, 3),
        "dtype": cfg.model.dtype,
        # what a full run of this config would take at this speed (60,000 MNIST training images)
        "epoch_s": round(60_000 / (cfg.batch_size / step_s), 1),
        f"projected_{cfg.epochs}_epochs_min": round(cfg.epochs * 60_000 / (cfg.batch_size / step_s) / 60, 1),
    }
    if not args.skip_sampling:
        ema_model = trainer.ema.model
        for name, kw in [("ddim100", dict(sampler="ddim", steps=100)), ("ddpm1000", dict(sampler="ddpm"))]:
            if name == "ddpm1000" and args.skip_ddpm:
                continue
            jax.block_until_ready(sample(ema_model, trainer.schedule, jax.random.key(0), args.samples, **kw))
            t = time.perf_counter()
            jax.block_until_ready(sample(ema_model, trainer.schedule, jax.random.key(1), args.samples, **kw))
            result[f"{name}_s_for_{args.samples}"] = round(time.perf_counter() - t, 2)
    print(json.dumps(result))
    w = max(len(k) for k in result)
    for k, v in result.items():
        print(f"  {k:<{w}}  {v}")
    return 0


if __name__ == "__main__":
    restart_with_huge_pages()  # glibc reads $GLIBC_TUNABLES only at start-up (helpers.environment)
    sys.exit(main())
