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
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (Intel(R) Xeon(R) Processor, 2 cores), 2026-12-03, commit d428d0c; the notebook took 23 min 40 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# The reference tutorial lists experiments to try (cosine vs linear schedule, Huber vs MSE,
# epsilon vs v-prediction, min-SNR weighting, model size) but runs none of them. Here we run them
# for real, with the **same compute budget** for every variant. That is the fair comparison for a
# reader with a fixed budget: a larger model gets fewer steps, a cheaper one more. Huber vs MSE is
# left out to keep the notebook near half an hour; add `"huber loss": {"loss": "huber"}` to
# `variants` below to run it too.
#
# Every variant changes one thing relative to a baseline (the notebook's preset). We compare:
# - a **held-out denoising error**: the MSE between the true and predicted noise on test digits,
#   with every model's output converted to a noise prediction. Training losses are *not*
#   comparable (v vs epsilon targets, weighted vs not); this is.
# - **sample quality** from the independent classifier of notebook 08: Frechet distance in its
#   feature space (lower is better) and the share of samples it classifies with confidence > 0.9.

# %%
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import helpers  # noqa: F401
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers import data
from helpers.config import get_config
from helpers.losses import sample_timesteps, to_x0_and_eps
from helpers.metrics import get_evaluator

from helpers.unet import count_params, create_unet

PRESET = tutorial.setup("06_experiments")
TINY = PRESET == "tiny"
BUDGET_MINUTES = 4.5  # training time of each variant on a CPU (the tiny preset: 8 steps each)
NUM_SAMPLES = 64 if TINY else 500  # samples per variant for the quality scores

# %% [markdown]
# ## 1. The variants
#
# A few minutes of the `cpu` preset are enough for recognisable digits (the Results page's "How long
# should I train?" curve), so every variant gets 4.5 minutes: long enough that the comparison is
# between models that draw digits, short enough that seven runs fit in about half an hour. The baseline is
# trained twice, with two seeds, so that the table shows how far two runs of the *same* recipe
# land apart: a difference between variants smaller than that is noise.

# %%
base = get_config(PRESET)
wide = tuple(2 * c for c in base.model.hidden_dims)
narrow = tuple(max(4, c // 2) for c in base.model.hidden_dims)
other = {"cosine": "linear", "linear": "cosine", "epsilon": "v", "v": "epsilon", "x0": "epsilon",
         "min_snr": "uniform", "uniform": "min_snr"}
variants = {  # each flips one choice of the baseline to the alternative
    "baseline": {},
    "baseline, seed 2": {"seed": base.seed + 1},
    f"{other[base.schedule]} schedule": {"schedule": other[base.schedule]},
    f"{other[base.prediction]}-prediction": {"prediction": other[base.prediction]},
    f"{other[base.loss_weighting]} weighting": {"loss_weighting": other[base.loss_weighting]},
    "small UNet": {"hidden_dims": narrow},
    "large UNet": {"hidden_dims": wide},
}
if TINY:  # a smoke test of the code (each run is mostly compilation at tiny); the exercises use these four
    variants = dict(list(variants.items())[:4])
print(f"baseline ({PRESET}): schedule {base.schedule}, prediction {base.prediction}, "
      f"weighting {base.loss_weighting}, UNet {base.model.channels} x {base.model.num_res_blocks} blocks, "
      f"seed {base.seed}")
for name, change in variants.items():
    print(f"  {name:18s} {change or '(the preset as it is)'}")

# %% [markdown]
# ## 2. Equal compute
#
# Every run gets the same **wall time**, 4.5 minutes of training, through the preset's own
# `fit_steps_to_time` (notebook 04): the run times its first steps, plans the steps that fit, and
# re-plans from its own loop's rate as it goes, so its learning-rate decay ends with the time limit.
# A cheaper model therefore takes more steps and a larger one fewer; the variants that change only
# the seed, the target, the weighting or the schedule cost the same per step and differ in steps
# only by the machine's own drift.

# %%
images, _ = data.load_split("mnist", "train", limit=base.train_limit)
configs = {}
for name, change in variants.items():
    budget = {} if TINY else {"time_limit_minutes": BUDGET_MINUTES, "fit_steps_to_time": True}
    configs[name] = base.replace(**change, **budget, num_samples=NUM_SAMPLES, guide_fraction=None,
                                 autoguidance_scale=1.0)  # training choices only: no guide
    print(f"{name:18s} {count_params(nnx.eval_shape(lambda: create_unet(configs[name].model))):>10,} parameters")

# %% [markdown]
# The small UNet (8/16/32) has a quarter of the baseline's parameters but costs only 1.6x less per
# step: at these sizes much of a step is fixed cost (normalization, attention, the optimizer update,
# dispatch), so halving the channels does not halve the time. The large UNet (32/64/128, the
# previous `cpu` preset) costs 2.4x more per step and gets correspondingly fewer steps.
#
# ## 3. Training every variant
#
# Runs are saved under `runs/experiments-<preset>/`; a finished variant is reused when the
# notebook is run again. Each run ends by drawing its samples with the EMA weights and the preset's
# sampler (`samples.npy` in the run folder), without autoguidance, since autoguidance needs a guide
# model that would cost each variant part of its budget; we score those.

# %%
def denoising_error(model, schedule, prediction, x0, key, batch_size=500):
    """Held-out noise-prediction MSE, E ||eps_hat(x_t, t) - eps||^2 over uniform t, for any target.

    Training losses are not comparable across targets, losses or weightings; this is, because every
    output is first turned into eps_hat with `to_x0_and_eps`.
    """

    @nnx.jit
    def batch_error(model, x0, key):
        t_key, n_key = jax.random.split(key)
        t = sample_timesteps(t_key, x0.shape[0], schedule.num_timesteps)
        noise = jax.random.normal(n_key, x0.shape, x0.dtype)
        x_t = schedule.q_sample(x0, t, noise)
        _, eps_hat = to_x0_and_eps(prediction, model(x_t, t), x_t, schedule, t)
        return jnp.sum(jnp.mean(jnp.square(eps_hat - noise), axis=(1, 2, 3)))

    total = sum(float(batch_error(model, jnp.asarray(x0[i:i + batch_size]), jax.random.fold_in(key, i)))
                for i in range(0, len(x0), batch_size))
    return total / len(x0)


evaluator = get_evaluator(quick=TINY)
test_images, _ = data.load_split("mnist", "test", limit=1000 if not TINY else 200)
x0_test = data.to_model_range(jnp.asarray(test_images))
rows, grids, trained = [], {}, {}
for name, cfg in configs.items():
    run_dir = tutorial.runs_dir() / f"experiments-{PRESET}" / name.replace(" ", "_")
    t0 = time.perf_counter()
    cfg, trainer, summary = tutorial.ensure_run(run_dir, cfg, progress=False)
    err = denoising_error(trainer.ema.model, trainer.schedule, cfg.prediction, x0_test, jax.random.key(0))
    x = np.load(run_dir / "samples.npy")
    q = evaluator.evaluate(x)
    grids[name] = x[:20]
    trained[name] = (cfg, trainer)
    rows.append((name, summary["steps"], summary["images_per_s"], summary["final_loss"], err,
                 q["frechet_distance"], q["confident_share"]))
    print(f"{name:18s} done in {time.perf_counter() - t0:6.1f} s: denoising error {err:.4f}, "
          f"FD {q['frechet_distance']:.1f}, confident {q['confident_share']:.1%}")

# %% [markdown]
# ## 4. Results

# %%
header = (f"{'variant':18s} {'steps':>6s} {'images/s':>8s} {'train loss':>10s} {'denoising err':>13s} "
          f"{'FD (lower=better)':>17s} {'conf > 0.9':>10s}")
print(header)
print("-" * len(header))
for name, steps, speed, loss, err, fd, conf in rows:
    print(f"{name:18s} {steps:6d} {speed:8.0f} {loss:10.4f} {err:13.4f} {fd:17.1f} {conf:10.1%}")
(_, _, _, _, err_a, fd_a, conf_a), (_, _, _, _, err_b, fd_b, conf_b) = rows[:2]
print(f"\nthe two seeds of the baseline differ by {abs(err_a - err_b):.4f} in denoising error, "
      f"{abs(fd_a - fd_b):.1f} in FD and {100 * abs(conf_a - conf_b):.1f} points of confident share")
print(f"real test digits for reference: FD {evaluator.evaluate(np.asarray(x0_test[:NUM_SAMPLES]))['frechet_distance']:.1f} "
      f"at N = {NUM_SAMPLES} (the FD of a finite sample is never 0)")

# %%
fig = tutorial.plot_image_rows(grids, ncols=20, size=0.45)
tutorial.show(fig, "variants_side_by_side")

# %% [markdown]
# How to read the table and the grids (one row of samples per variant, same seeds):
#
# - **Every run is short**: 150 s is about 1,200 steps (0.65 epochs) of the baseline, and every
#   Frechet distance (1,000-1,500) is far above that of real digits (about 50 at N = 200). The
#   strokes are speckled and many shapes are not yet digits. This is a comparison of how fast each
#   recipe *starts* to learn, which is what a reader with a few minutes of CPU cares about; the
#   20-minute comparisons in the README ("The cpu preset") are the long-run counterpart.
# - **Equal compute is approximate on a shared machine**: the step counts come from steps timed
#   before training, and the runs then took 169-183 s instead of 150 (the machine was slower while
#   they ran) and the small UNet 135 s. Read differences of a few percent in time as noise.
# - **Noise in the scores**: with 200 samples, a confident share of 40% has a standard error of
#   about 3.5 points, so differences below ~7 points (the baseline, Huber loss and the linear
#   schedule here, 38.5-42%) are not evidence either way; the Frechet distance separates them
#   more clearly (the baseline's 1,042 is the best of the table).
# - **The model size of the preset is a sweet spot at this budget.** The small UNet (8/16/32) takes
#   57% more steps but scores worse (FD 1,215, 31.5% confident): too little capacity. The large one
#   (32/64/128, the previous `cpu` preset) gets only 519 steps and is the worst row (FD 1,483,
#   24.5%). Parameters cost time, and the best model for a few minutes of CPU is the one that
#   balances capacity against steps; the README's 20-minute runs found the same between 16/32/64
#   and 32/64/128.
# - **The prediction target is visible by eye**: epsilon-prediction draws thick, blotchy shapes, and
#   the classifier is confident on only 27.5% of them (v-prediction, the baseline: 40.5%). The
#   sampler recovers the image as $(x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$,
#   which amplifies any error in $\hat\varepsilon$, most of all at the noisy steps where
#   $\bar\alpha_t$ is small. v-prediction gives clean images earlier; at 20 minutes each the same
#   switch raised the confident share from 61% to 70% (README).
# - **Min-SNR weighting helps a little**: uniform weighting is worse on both figures (FD 1,230,
#   35.5%), in line with its purpose (Hang et al. 2023: the nearly clean timesteps dominate an
#   unweighted loss and slow learning of the others).
# - **The denoising error is a fair yardstick within one schedule, not across schedules**: the
#   linear schedule has by far the lowest (0.049) but a worse Frechet distance (1,356). Its
#   alpha_bar falls fast, so many of its timesteps are almost pure noise, where predicting the noise
#   is easy (x_t is nearly the noise itself); averaged over uniform t, that flatters it.
# - **The seed decides the digit, the recipe decides how clean it is**: the same column looks alike
#   in most rows, because every variant starts from the same noise and draws the same sampler noise;
#   early models agree on the coarse shape. The linear schedule's row differs most: its noise
#   levels, and so the path from noise to image, are different.
# - The **training loss** column mixes different quantities (Huber vs squared error, v vs epsilon
#   targets, weighted vs unweighted) and must not be compared across rows.
#
# ## Summary
# One table, one budget, every variant trained for real, and the baseline twice so that the noise
# of a score is on the table. Use the sample scores (and the denoising error within one schedule),
# not the training loss, to compare objectives.
#
# ## Exercises
#
# Each runs in seconds on the models trained above; the solutions are in collapsed cells.
#
# 1. The linear schedule has the lowest denoising error in the table, yet not the best samples.
#    Measure the error at a few single timesteps t for the baseline and the linear schedule: at
#    which noise levels does the linear schedule's advantage come from?
# 2. Compare the epsilon- and v-prediction models by the error of their *image* estimate
#    $\hat x_0$ instead of the noise: at which t is the epsilon model's $\hat x_0$ worse?
# 3. How noisy is a confident share of 500 samples? Resample the baseline's classifier verdicts
#    with replacement (a bootstrap) and compare the spread with the gap between the two seeds.

# %% jupyter={"source_hidden": true}
# Solution 1: the held-out error at single timesteps, eps_hat against the true noise.
def error_at(model_and_cfg, t_value, what="eps", n=500, seed=0):
    """Mean squared error of the noise estimate ("eps") or the image estimate ("x0") at one t."""
    cfg, trainer = model_and_cfg
    x0 = x0_test[:n]
    noise = jax.random.normal(jax.random.key(seed), x0.shape, x0.dtype)
    t = jnp.full((x0.shape[0],), t_value, jnp.int32)
    x_t = trainer.schedule.q_sample(x0, t, noise)
    x0_hat, eps_hat = to_x0_and_eps(cfg.prediction, trainer.ema.model(x_t, t), x_t, trainer.schedule, t)
    return float(jnp.mean(jnp.square((eps_hat - noise) if what == "eps" else (x0_hat - x0))))


T = base.num_timesteps
t_values = [int(f * (T - 1)) for f in (0.02, 0.25, 0.5, 0.75, 0.98)]
linear = f"{other[base.schedule]} schedule"
print(f"{'t':>5s} {'baseline':>9s} {linear:>16s}   (noise-prediction error)")
for t_value in t_values:
    print(f"{t_value:5d} {error_at(trained['baseline'], t_value):9.4f} {error_at(trained[linear], t_value):16.4f}")

# %% jupyter={"source_hidden": true}
# Solution 2: the same, for the image estimate x0_hat (eq. 15 of Ho et al. 2020 recovers it from eps_hat).
eps_name = f"{other[base.prediction]}-prediction"
print(f"{'t':>5s} {base.prediction + '-prediction':>14s} {eps_name:>18s}   (image-estimate error)")
for t_value in t_values:
    print(f"{t_value:5d} {error_at(trained['baseline'], t_value, 'x0'):14.4f} "
          f"{error_at(trained[eps_name], t_value, 'x0'):18.4f}")

# %% jupyter={"source_hidden": true}
# Solution 3: resample the 0/1 verdicts "classified with confidence > 0.9" of the baseline's samples.
logits, _ = evaluator.predict(np.load(tutorial.runs_dir() / f"experiments-{PRESET}" / "baseline" / "samples.npy"))
confident = np.max(jax.nn.softmax(logits, axis=-1), axis=1) > 0.9
rng = np.random.default_rng(0)
shares = [np.mean(rng.choice(confident, size=len(confident))) for _ in range(1000)]
seed_gap = abs(rows[0][6] - rows[1][6])
print(f"baseline: {np.mean(confident):.1%} confident, bootstrap standard error {np.std(shares):.1%} "
      f"(N = {len(confident)}); the two seeds differ by {seed_gap:.1%}")
