# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Experiments at equal compute
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (Intel(R) Xeon(R) Processor, 2 cores), 2026-11-27; the notebook took 27 min 29 s (`python scripts/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# The reference tutorial lists experiments to try (cosine vs linear schedule, Huber vs MSE,
# epsilon vs v-prediction, min-SNR weighting, model size) but runs none of them. Here we run them
# all, for real, with the **same compute budget** for every variant: each one trains for the same
# wall-clock time on this machine. That is the fair comparison for a reader with a fixed budget: a
# larger model gets fewer steps, a cheaper one more.
#
# Every variant changes one thing relative to a baseline (the notebook's preset). We compare:
# - a **held-out denoising error**: the MSE between the true and predicted noise on test digits,
#   with every model's output converted to a noise prediction. Training losses are *not*
#   comparable (Huber vs MSE, v vs epsilon targets, weighted vs not); this is.
# - **sample quality** from the independent classifier of notebook 08: Frechet distance in its
#   feature space (lower is better) and the share of samples it classifies with confidence > 0.9.

# %%
import time

import jax
import jax.numpy as jnp
import numpy as np

import helpers  # noqa: F401
from helpers import data, tutorial
from helpers.config import get_config
from helpers.losses import denoising_error
from helpers.metrics import get_evaluator
from helpers.plotting import plot_image_rows
from helpers.training import Trainer
from helpers.unet import count_params, create_unet

PRESET = tutorial.setup("06_experiments")
TINY = PRESET == "tiny"
BUDGET_SECONDS = None if TINY else 60.0  # training time per variant (tiny: 8 steps each)
NUM_SAMPLES = 64 if TINY else 200

# %% [markdown]
# ## 1. The variants

# %%
base = get_config(PRESET)
wide = tuple(2 * c for c in base.model.hidden_dims)
narrow = tuple(max(4, c // 2) for c in base.model.hidden_dims)
other = {"cosine": "linear", "linear": "cosine", "mse": "huber", "huber": "mse",
         "epsilon": "v", "v": "epsilon", "x0": "epsilon", "min_snr": "uniform", "uniform": "min_snr"}
variants = {  # each flips one choice of the baseline to the alternative
    "baseline": {},
    f"{other[base.schedule]} schedule": {"schedule": other[base.schedule]},
    f"{other[base.loss]} loss": {"loss": other[base.loss]},
    f"{other[base.prediction]}-prediction": {"prediction": other[base.prediction]},
    f"{other[base.loss_weighting]} weighting": {"loss_weighting": other[base.loss_weighting]},
    "small UNet": {"hidden_dims": narrow},
    "large UNet": {"hidden_dims": wide},
}
print(f"baseline ({PRESET}): schedule {base.schedule}, loss {base.loss}, prediction {base.prediction}, "
      f"weighting {base.loss_weighting}, UNet {base.model.channels} x {base.model.num_res_blocks} blocks")
for name, change in variants.items():
    print(f"  {name:18s} {change or '(the preset as it is)'}")

# %% [markdown]
# ## 2. Equal compute: steps from measured step time
#
# We time a few compiled train steps of each variant and give it as many steps as fit in the
# budget. The learning-rate schedule (warmup, cosine decay) is stretched over each variant's own
# number of steps, so every run ends its decay.

# %%
images, _ = data.load_split("mnist", "train", limit=base.train_limit)
configs = {}
for name, change in variants.items():
    cfg = base.replace(**change, time_limit_minutes=None, num_samples=NUM_SAMPLES)
    if TINY:
        steps, sec = cfg.max_steps, float("nan")
    else:
        probe = Trainer(cfg, create_unet(cfg.model, seed=cfg.seed), images)
        sec = probe.seconds_per_step()
        steps = int(BUDGET_SECONDS / sec)
    cfg = cfg.replace(max_steps=steps, warmup_steps=min(cfg.warmup_steps, steps // 10))
    configs[name] = cfg
    print(f"{name:18s} {count_params(create_unet(cfg.model)):>10,} parameters  {1000 * sec:7.1f} ms/step  "
          f"-> {steps:5d} steps ({steps * cfg.batch_size / len(images):.2f} epochs)")

# %% [markdown]
# The variants that only change the loss or schedule should cost the same per step (differences
# here are noise from other work on the machine); the large UNet costs several times more per step
# and gets correspondingly fewer steps.
#
# ## 3. Training every variant
#
# Runs are saved under `runs/experiments-<preset>/`; a finished variant is reused when the
# notebook is run again.

# %%
evaluator = get_evaluator(quick=TINY)
test_images, _ = data.load_split("mnist", "test", limit=1000 if not TINY else 200)
x0_test = data.to_model_range(jnp.asarray(test_images))
rows, grids = [], {}
for name, cfg in configs.items():
    run_dir = tutorial.runs_dir() / f"experiments-{PRESET}" / name.replace(" ", "_")
    t0 = time.perf_counter()
    cfg, trainer, summary = tutorial.ensure_run(run_dir, cfg, progress=False)
    model = trainer.ema.model
    err = denoising_error(model, trainer.schedule, cfg.prediction, x0_test, jax.random.key(0))
    x = np.asarray(trainer.sample(jax.random.key(1), cfg.num_samples))
    q = evaluator.evaluate(x)
    grids[name] = x[:20]
    rows.append((name, summary["steps"], summary["train_seconds"], summary["final_loss"], err,
                 q["frechet_distance"], q["confident_share"]))
    print(f"{name:18s} done in {time.perf_counter() - t0:6.1f} s: denoising error {err:.4f}, "
          f"FD {q['frechet_distance']:.1f}, confident {q['confident_share']:.1%}")

# %% [markdown]
# ## 4. Results

# %%
header = (f"{'variant':18s} {'steps':>6s} {'train s':>8s} {'train loss':>10s} {'denoising err':>13s} "
          f"{'FD (lower=better)':>17s} {'conf > 0.9':>10s}")
print(header)
print("-" * len(header))
for name, steps, secs, loss, err, fd, conf in rows:
    print(f"{name:18s} {steps:6d} {secs:8.0f} {loss:10.4f} {err:13.4f} {fd:17.1f} {conf:10.1%}")
print(f"\nreal test digits for reference: FD {evaluator.evaluate(np.asarray(x0_test[:NUM_SAMPLES]))['frechet_distance']:.1f} "
      f"at N = {NUM_SAMPLES} (the FD of a finite sample is never 0)")

# %%
fig = plot_image_rows(grids, ncols=20, size=0.45)
tutorial.show(fig, "variants_side_by_side")

# %% [markdown]
# How to read the table and the grids (one row of samples per variant, same seeds):
#
# - The **training loss** column mixes different quantities (Huber vs squared error, v vs epsilon
#   targets, weighted vs unweighted) and must not be compared across rows; the **denoising error**
#   can be.
# - **Sample quality** is what we care about, and here the honest reading of the committed run is:
#   **the budget was far too small**. At 60 s per variant (and with the machine shared with other
#   jobs while it ran, which made the measured step times, and so the step counts, uneven) every
#   variant trained for 0.02-0.15 epochs, every Frechet distance is above 2,000 (real digits: about
#   50 at N = 200) and the grids are noise. The "confident" shares of such samples are
#   confidence on noise (notebook 08 shows the classifier does that), not quality.
# - What the run does show: after ~100-300 steps the denoising errors already differ (0.20-0.42),
#   with the linear schedule and v/epsilon targets lowest and the large UNet, which got only 31
#   steps, highest; at equal *time* a model 4x larger per step starts far behind.
#
# For a comparison that says something about samples, set `BUDGET_SECONDS = 600` (or more) and run
# the notebook on an otherwise idle machine: the `cpu` preset needs about 20 minutes to draw
# mostly legible digits (notebook 04), and its v-prediction choice was made that way (README, "The
# cpu preset": 61% -> 70% confident samples over epsilon at 20 minutes each).
#
# ## Summary
# One table, one budget, every variant trained for real. Use the denoising error and the sample
# scores, not the training loss, to compare objectives.
