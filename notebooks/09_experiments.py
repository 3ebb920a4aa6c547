# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Experiments at equal compute
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), commit ac9847c; the notebook took 39 min 35 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# The reference tutorial (Artifex's ["Training a Diffusion Model on MNIST"](https://docs.avitai.bio/artifex/examples/basic/diffusion-mnist)) lists experiments to try (cosine vs linear schedule, Huber vs MSE,
# epsilon vs v-prediction, min-SNR weighting, model size) but runs none of them. Here we run them
# for real, with the **same compute budget** for every variant. That is the fair comparison for a
# reader with a fixed budget: a larger model gets fewer steps, a cheaper one more. Huber vs MSE is
# left out to keep the notebook within forty minutes; add `"huber loss": {"loss": "huber"}` to
# `variants` below to run it too.
#
# Every variant changes one thing relative to a baseline (the notebook's preset). We compare:
# - a **held-out denoising error**: the MSE between the true and predicted noise on test digits,
#   with every model's output converted to a noise prediction. Training losses are *not*
#   comparable (v vs epsilon targets, weighted vs not); this is.
# - **sample quality** from the independent classifier of notebook 05: Frechet distance in its
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
from helpers.distributed import data_mesh
from helpers.losses import sample_timesteps, to_x0_and_eps
from helpers.metrics import get_evaluator
from helpers.training import BatchFeed, TrainState, make_plan, noise_schedule, seconds_per_step

from helpers.unet import count_params, create_unet

PRESET = tutorial.setup("09_experiments")
QUICK = tutorial.quick()  # a check of the code: fewer samples and steps
BASE_STEPS = max(1, make_plan(get_config(PRESET), 60_000).total_steps // 5)  # a fifth of the preset's run
NUM_SAMPLES = 64 if QUICK else 500  # samples per variant for the quality scores

# %% [markdown]
# ## 1. The variants
#
# Sample quality grows quickly with training time at first (the docs' Results page measures it from
# 5 to 40 minutes). These runs sample without autoguidance, so that each score measures the trained
# network alone, and every variant gets the baseline's training time, a fifth of the preset's run
# (about 4.5 minutes on two cores): long enough that the baseline draws digits (with scribbles among
# them), short enough that seven runs fit in about forty minutes. The
# baseline is trained twice, with two seeds, so that the table shows how far two runs of the *same*
# recipe land apart: a difference between variants smaller than that is noise.

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
if QUICK:  # a check of the code (each run is then mostly compilation); the exercises use these four
    variants = dict(list(variants.items())[:4])
print(f"baseline ({PRESET}): schedule {base.schedule}, prediction {base.prediction}, "
      f"weighting {base.loss_weighting}, UNet {base.model.channels} x {base.model.num_res_blocks} blocks, "
      f"seed {base.seed}")
for name, change in variants.items():
    print(f"  {name:18s} {change or '(the preset as it is)'}")

# %% [markdown]
# ## 2. Equal compute
#
# Every run gets the same **training time**, as a fixed plan of steps. The variants that change
# only the seed, the target, the weighting or the schedule cost the same per step as the baseline, so
# they train exactly its steps. A narrower or wider UNet costs less or more per step: we time a step
# of each width, in rounds that take turns (so that the machine's speed, which drifts within minutes,
# hits every width alike; the docs' Performance page measures the drift), and scale its steps by its
# speed relative to the baseline's. Each run's learning rate then decays over its own steps.
#
# Why not a time budget (`minutes`, notebook 04, section 10)? It times a few steps of each run just
# before it trains, at a different moment for each run; with a drifting machine speed, two runs of
# the same recipe would then train different numbers of steps.

# %%
images, _ = data.load_split("mnist", "train", limit=base.train_limit)
configs = {name: base.replace(**change, num_samples=NUM_SAMPLES, guide_fraction=None, autoguidance_scale=1.0)
           for name, change in variants.items()}  # training choices only: no guide (section 1)


def step_seconds_by_width(cfg_by_width: dict, rounds: int = 3, steps: int = 20) -> dict:
    """Median seconds per train step of each UNet width, timed in rounds whose order rotates, after a
    warm-up round (the first timed steps of a shape in a process tend to be slower than the later ones)."""
    mesh = data_mesh()
    feeds = {w: BatchFeed(c, TrainState(c), images, None, mesh) for w, c in cfg_by_width.items()}
    widths, times = list(cfg_by_width), {w: [] for w in cfg_by_width}
    for r in range(rounds + 1):
        for w in widths[r % len(widths):] + widths[:r % len(widths)]:
            seconds = seconds_per_step(cfg_by_width[w], feeds[w], steps, warmup=1 if QUICK else 10)
            if r > 0:  # round 0 is the warm-up
                times[w].append(seconds)
    return {w: float(np.median(t)) for w, t in times.items()}


by_width = {cfg.model.hidden_dims: cfg for cfg in configs.values()}
seconds = {base.model.hidden_dims: 1.0}  # one width (a quick check's four variants): nothing to time
if len(by_width) > 1:
    seconds = step_seconds_by_width(by_width, *((1, 2) if QUICK else ()))
    for width, s in seconds.items():
        print(f"UNet {str(width):14s} {1000 * s:5.0f} ms per step, {seconds[base.model.hidden_dims] / s:4.2f}x the "
              f"baseline's speed")
for name, cfg in configs.items():  # the baseline's width: exactly its steps; another: scaled by its speed, in chunks
    speed = seconds[base.model.hidden_dims] / seconds[cfg.model.hidden_dims]
    steps = BASE_STEPS if speed == 1.0 else max(1, round(BASE_STEPS * speed / cfg.log_every)) * cfg.log_every
    configs[name] = cfg.replace(max_steps=steps)
    print(f"{name:18s} {count_params(nnx.eval_shape(lambda: create_unet(cfg.model))):>10,} parameters, "
          f"{configs[name].max_steps:,} steps")

# %% [markdown]
# The small UNet (8/16/32) has about a quarter of the baseline's parameters and the large one
# (32/64/128) about four times as many, but their cost per step differs by less than that (the
# speeds printed above).
#
# ## 3. Training every variant
#
# Runs are saved under `runs/experiments-<preset>/`; a finished variant is reused when the
# notebook is run again. Each run ends by drawing its samples with the EMA weights and the preset's
# sampler (`samples.npy` in the run folder), without autoguidance (section 1 says why); we score
# those.

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


evaluator = get_evaluator(quick=QUICK)
test_images, _ = data.load_split("mnist", "test", limit=200 if QUICK else 1000)
x0_test = data.to_model_range(jnp.asarray(test_images))
rows, grids, trained = [], {}, {}
for name, cfg in configs.items():
    run_dir = tutorial.runs_dir() / f"experiments-{PRESET}" / name.replace(" ", "_")
    t0 = time.perf_counter()
    cfg, state, summary = tutorial.ensure_run(run_dir, cfg, progress=False)
    err = denoising_error(state.ema.model, noise_schedule(cfg), cfg.prediction, x0_test, jax.random.key(0))
    x = np.load(run_dir / "samples.npy")
    q = evaluator.evaluate(x)
    grids[name] = x[:20]
    trained[name] = (cfg, state)
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
# How to read the table and the grids (one row of samples per variant; every row but the second
# starts from the same noise):
#
# - **The baseline draws digits, not yet good ones.** After its 1,800 steps most of its samples are
#   digits (1s, 7s, 9s and 3s are easy to find in its row) and a good part are still scribbles:
#   a bit over half are classified with confidence, and the Frechet distance is more than ten times
#   that of real digits at the same N. This compares how fast each recipe *learns*, at the budget a
#   reader with a few minutes of CPU has; the Results page's 20-minute runs are the long-run
#   counterpart (with autoguidance and at N = 1,000, so compare their samples, not their figures).
# - **Two seeds of the same recipe set the noise level, and it is large.** The baseline's two runs
#   train the same steps and differ only in their seed (initialisation, data order, noise), yet
#   their scores differ by the amounts printed below the table: about 39 in Frechet distance (a
#   tenth of either score) and six points of confident share. A variant's FD within about that gap of the seeds' range says
#   little, and so does a confident share within about six points (exercise 3 measures the standard
#   error of one share).
# - **At this budget the prediction target stays inside the noise**: epsilon-prediction's confident
#   share is within a point of the baseline's and its FD just below both seeds', by much less than
#   they differ, though its row shows a few blotchier shapes. Where the two targets do differ is
#   the image estimate at the noisy end: the sampler recovers the image as
#   $(x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$, which multiplies any error in
#   $\hat\varepsilon$ by $\sqrt{(1-\bar\alpha_t)/\bar\alpha_t} = e^{-\lambda}$, about 120 where sampling
#   starts ($\lambda = -4.8$) and larger still at the last timesteps (exercise 2 measures it); v-prediction (notebook 04) divides by nothing. In the preset
#   search's 20-minute runs (the docs' Earlier runs page) v-prediction drew clearly better samples.
# - **The denoising error says how well a model predicts the noise, not how good its samples
#   are**: the linear schedule has by far the lowest, yet its samples are no better (a confident share between
#   the two seeds', an FD above both by less than they differ). At the
#   same $t$ its $\bar\alpha_t$ is lower than the cosine schedule's, so its $x_t$ holds more noise,
#   and noise is easier to predict the more of it there is; averaged over uniform $t$, that flatters
#   it (exercise 1). Within the cosine schedule too, uniform weighting has the lowest error of the
#   same-schedule rows, beyond the seeds' difference, and the worst FD (next bullets): the average
#   over uniform $t$ is dominated by the nearly clean steps (exercise 1's first row), which uniform
#   weighting trains at full weight and min-SNR weighting down-weights.
# - **Model size, at equal time: bigger is no better, smaller is worse.** The small UNet takes the
#   most steps and the large one the fewest (its images/s are less than half the baseline's). The
#   large UNet learns more per step and makes up for taking fewer: its FD lies below both seeds', by
#   less than the seeds differ, and its confident share is one point below the baseline's. The
#   small UNet's many cheap steps do not make up for its size: its confident share is the lowest in
#   the table, seven points below the baseline's, and its FD lies above both seeds' by more than
#   twice their gap. The preset's width is chosen for the 20-minute run.
# - **Min-SNR weighting shows in the Frechet distance, not in the confident share**: uniform
#   weighting's share is within a point of the baseline's, but its FD lies above both seeds' by
#   more than twice their gap. Min-SNR's purpose ([Hang et al. 2023](https://arxiv.org/abs/2303.09556);
#   notebook 04, section 6) is faster convergence, so a short run is where it should show.
# - **The seed and the schedule decide the digit, the rest of the recipe how clean it is**: the same
#   column looks alike in five rows, because those variants start from the same noise and draw the
#   same sampler noise. The second seed's row differs entirely (another initialisation and another
#   noise), and so does, almost entirely, the linear schedule's: its model learned other noise levels
#   (the sampler visits nearly the same values of lambda, at other timesteps), and so takes another path
#   from the same noise.
# - The **training loss** column mixes different quantities (v vs epsilon targets, weighted vs
#   unweighted, different schedules) and must not be compared across rows.
#
# To test a finding with more confidence, raise `BASE_STEPS` and `NUM_SAMPLES`, train more seeds
# of the baseline, and run on an otherwise idle machine.
#
# ## Summary
# One table, one budget, every variant trained for real, and the baseline twice so that the noise
# of a score is on the table. Compare objectives by their sample scores: the training loss mixes
# different quantities, and the denoising error says how well a model predicts the noise, not how
# good its samples are.
#
# ## Exercises
#
# Each runs in seconds on the models trained above; the solutions are in collapsed cells.
#
# 1. The linear schedule has by far the lowest denoising error in the table, yet no better samples.
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
    cfg, state = model_and_cfg
    schedule = noise_schedule(cfg)
    x0 = x0_test[:n]
    noise = jax.random.normal(jax.random.key(seed), x0.shape, x0.dtype)
    t = jnp.full((x0.shape[0],), t_value, jnp.int32)
    x_t = schedule.q_sample(x0, t, noise)
    x0_hat, eps_hat = to_x0_and_eps(cfg.prediction, state.ema.model(x_t, t), x_t, schedule, t)
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

# %% [markdown] jupyter={"source_hidden": true}
# **1.** The linear schedule's noise-prediction error is the lower one at every $t$, not only at the
# noisy end. The same $t$ is not the same noise level in the two schedules: the linear schedule's
# $\bar\alpha_t$ falls faster (notebook 02), so at every $t$ its $x_t$ is noisier, and predicting
# the noise is easier the more of $x_t$ it makes up. In absolute terms the gap is largest at the
# nearly clean end (the first row), which is what the average over $t$ mostly sees; relative to the
# error it is largest at the noisy end. Compare schedules by samples, or at equal $\bar\alpha$,
# never by an error averaged over $t$.
#
# **2.** At small $t$ the two image estimates are close; towards $t = T$ the epsilon model's
# $\hat x_0$ error grows far beyond the v model's, by over an order of magnitude at the last $t$:
# dividing by $\sqrt{\bar\alpha_t} \approx 0$ amplifies every error in $\hat\varepsilon$.
# v-prediction's $\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v$ divides by nothing.
#
# **3.** The bootstrap standard error of one confident share of 500 samples is about two points, so
# two shares must differ by about six points (twice the standard error of a difference) before the
# sampling alone cannot explain it. The two seeds differ by about that much, so the sampling of
# 500 digits nearly accounts for their gap; the training seed may add to it, but one pair cannot
# show how much. Compare a variant with both seeds, never with the baseline alone.
