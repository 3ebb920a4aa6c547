# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Faster sampling and guidance: autoguidance, DPM-Solver++, quality per network evaluation
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), commit c1ecbe4; the notebook took 10 min 56 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# Notebook 06 sampled the trained model with DDPM and DDIM and scored the digits. This notebook
# changes two things. **What the network says** at every step: autoguidance
# ([Karras et al. 2024](https://arxiv.org/abs/2406.02507)) extrapolates away from a weaker version of
# the same model. **How many steps** are needed: DPM-Solver++
# ([Lu et al. 2022](https://arxiv.org/abs/2211.01095)) is a second-order solver at the cost of DDIM,
# and a guidance interval ([Kynkaanniemi et al. 2024](https://arxiv.org/abs/2404.07724)) skips the
# guide where it may not help. Then we measure quality per network evaluation on notebook 04's run,
# the measurement that chose the `cpu` preset's sampler (there on the main job's runs). Scores are notebook 05's: Frechet distance (FD,
# lower is better) and the share of samples the classifier labels with confidence above 0.9.

# %%
import inspect
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

import helpers  # noqa: F401
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers.metrics import get_evaluator
from helpers.sampling import Autoguidance, DPMSolverPP, make_sampler, max_sample_steps, network_evaluations, sample
from helpers.training import noise_schedule

PRESET = tutorial.setup("07_faster_sampling_and_guidance")
cfg, run_state, summary = tutorial.trained_run(PRESET)
T = cfg.num_timesteps
ema_model, schedule = run_state.ema.model, noise_schedule(cfg)
MAX_STEPS = max_sample_steps(schedule)  # a sampler's most steps (notebook 06)
evaluator = get_evaluator(quick=tutorial.quick())
n_score = 32 if tutorial.quick() else 300
ncols = 10
print(f"model from {tutorial.tutorial_run_dir(PRESET)}: step {summary['steps']}, T = {T}; "
      f"the preset samples with {cfg.sampler}-{cfg.sample_steps}, autoguidance w = {cfg.autoguidance_scale:g}")

# %% [markdown]
# ## 1. Autoguidance: guiding the model with a weaker version of itself
#
# Notebook 06 tuned the sampler around one fixed network. Autoguidance (Karras et al. 2024, "Guiding
# a diffusion model with a bad version of itself") changes what the network says at every step. Take
# a *weaker* model $D_0$ that makes the same kinds of mistakes as ours, $D_1$, only more of them,
# and use
#
# $$\text{out} = D_0(x_t, t) + w\,\big(D_1(x_t, t) - D_0(x_t, t)\big), \qquad w > 1.$$
#
# The difference $D_1 - D_0$ points from "what an undertrained model believes" towards "what more
# training taught", and $w > 1$ goes further in that direction. It is the same extrapolation as
# classifier-free guidance (notebook 10), but it needs no labels, so it works for our unconditional
# model. The weak model costs nothing extra here: training kept a frozen copy of the EMA weights
# at about 15% of the run (`guide_fraction`), and `sample(..., autoguidance=Autoguidance(guide, w))` runs
# both networks at every step (twice the network evaluations; the timings below show what that costs
# here). $w = 1$ is the plain model
# (`autoguidance=None`: the guide is not run at all).

# %%
if run_state.guide is not None and run_state.guide.step >= 0:
    guide = run_state.guide.model
    print(f"guide: the EMA weights at step {run_state.guide.step} of {summary['steps']}")
else:  # e.g. the paper preset, trained without guide_fraction: every w below then equals w = 1
    guide = None
    print("this run kept no guide model (train with guide_fraction set): autoguidance is off below")


def guided(w: float, interval=None):
    """Autoguidance at weight w with the run's guide; None (the plain model) at w = 1 or without a guide."""
    return None if guide is None or w == 1 else Autoguidance(guide, w, interval)


# every row: DDIM-50 with eta = 1 (notebook 06), the same noise
steps, eta, key = min(50, MAX_STEPS), 1.0, jax.random.key(5)
ws = sorted({1.0, 1.5, cfg.autoguidance_scale, 3.0})
rows = {} if guide is None else {"the guide alone": sample(guide, schedule, key, ncols, steps=steps, eta=eta,
                                                            prediction=cfg.prediction)}
rows.update({f"w = {w:g}" + (" (the final model alone)" if w == 1 else ""):
             sample(ema_model, schedule, key, ncols, steps=steps, eta=eta, prediction=cfg.prediction,
                    autoguidance=guided(w)) for w in ws})
fig = tutorial.plot_image_rows(rows)
tutorial.show(fig, "autoguidance_rows")

# %% [markdown]
# The rows share their starting noise and their sampler noise; the top row is the guide alone, then
# the final model alone, then guided with growing $w$. The guide draws thin, broken or ambiguous
# shapes (a speck in the fifth column, a squiggle in the eighth). The final model draws better ones
# but still some malformed digits (the third and fourth columns, the sixth). With guidance two of
# them are repaired (a clean 7 in the sixth column, a 3 in the third) while the fourth stays
# malformed, and some columns turn into another digit than the unguided shape suggested (the first
# column's 5 and the last column's 8 become 6s, the eighth column's 3 a 2). From $w = 2$ to 3 every
# column keeps its digit, with bolder strokes at 3.

# %%
ag_ws = sorted({1.0, 1.5, 2.0, cfg.autoguidance_scale, 2.5, 3.0})
ag_scores = {}
print(f"DDIM-{steps}, eta = {eta:g}, {n_score} samples per setting, the same noise for all")
print(f"{'w':>5s} {'seconds':>8s} {'FD':>7s} {'conf > 0.9':>10s} {'classes min-max':>16s}")
for w in ag_ws:
    t0 = time.perf_counter()
    x = np.asarray(sample(ema_model, schedule, jax.random.key(21), n_score, steps=steps, eta=eta,
                          prediction=cfg.prediction, autoguidance=guided(w)))
    dt = time.perf_counter() - t0
    q = ag_scores[w] = evaluator.evaluate(x)
    print(f"{w:>5g} {dt:8.1f} {q['frechet_distance']:7.1f} {q['confident_share']:10.1%} "
          f"{q['min_class_share']:7.1%} - {q['max_class_share']:.1%}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].plot(ag_ws, [100 * ag_scores[w]["confident_share"] for w in ag_ws], "o-")
axes[1].plot(ag_ws, [ag_scores[w]["frechet_distance"] for w in ag_ws], "o-")
axes[0].set(xlabel="autoguidance weight w (1 = off)", ylabel="% classified with confidence > 0.9")
axes[1].set(xlabel="autoguidance weight w (1 = off)", ylabel="Frechet distance (lower is better)")
fig.tight_layout()
tutorial.show(fig, "autoguidance_scores")

# %% [markdown]
# The scores (300 samples per $w$, the same noise; a share near 90% has a standard error of about
# 1.7 points):
#
# - **The confident share rises** by about four points at $w = 1.5$ and keeps rising, past 92%
#   from $w = 2$ on.
# - **The Frechet distance falls to less than half**, to its lowest at $w = 2$, then rises again as
#   the stronger extrapolation pushes the digits past the real ones (bolder, more uniform strokes).
# - **No class is lost**: every class keeps between 6% and 14% of the samples at every $w$, so the
#   gain is not the classifier being confident on one easy digit.
#
# The `cpu` preset's own weight was chosen on the main job's runs, with its steps and its guidance
# interval ($w = 2.5$ at $t \ge 167$; the docs' Results page).
#
# Why does a worse model help? Karras et al. argue that an under-trained model errs in the same
# directions as a well-trained one, only more: the difference between the two points away from
# those errors, towards the typical digits. The guide must be a version of *the same* model, so that
# both make the same kinds of mistakes; here it is the EMA weights at about 15% of the run
# (`guide_fraction`). The price is a second network evaluation at every step.
#
# ## 2. Fewer network evaluations: DPM-Solver++
#
# DDIM and DDPM are first-order samplers: each step trusts only the network's estimate at its own
# $t$. DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast solver for guided sampling of diffusion
# probabilistic models") writes the reverse process in $\lambda_t = \log(\alpha_t / \sigma_t)$, half
# the log signal-to-noise ratio ($\alpha_t = \sqrt{\bar\alpha_t}$, $\sigma_t = \sqrt{1 - \bar\alpha_t}$),
# where its linear part integrates exactly. With $h = \lambda_{t_{prev}} - \lambda_t$, one step is
#
# $$x_{t_{prev}} = \frac{\sigma_{t_{prev}}}{\sigma_t}\,x_t + \alpha_{t_{prev}}\,(1 - e^{-h})\,D .$$
#
# With $D = \hat x_0$ this is exactly DDIM with $\eta = 0$. The **2M** solver ("second order,
# multistep") instead extrapolates $\hat x_0$ along $\lambda$ from this step's estimate and the
# previous step's: $D = (1 + \tfrac{1}{2r})\,\hat x_0(t) - \tfrac{1}{2r}\,\hat x_0(t_{before})$ with
# $r = h_{before} / h$. That is second-order accuracy for the price of one network evaluation per
# step, as DDIM's. Its **SDE** form (same paper) adds fresh noise, as $\eta = 1$ does for DDIM:
#
# $$x_{t_{prev}} = \frac{\sigma_{t_{prev}}}{\sigma_t}\,e^{-h}\,x_t + \alpha_{t_{prev}}\,(1 - e^{-2h})\,D +
#   \sigma_{t_{prev}}\sqrt{1 - e^{-2h}}\,z .$$
#
# The solver steps in $\lambda$, so it visits the time grid of notebook 06 (timesteps evenly spaced in
# $\lambda$, from $\lambda = -4.8$ to the cleanest timestep), as DDIM does: on timesteps evenly spaced
# in $t$ instead, the last steps would be long jumps in $\lambda$, where a straight-line extrapolation
# overshoots. The tests check
# all of this on data whose ideal denoiser is known in closed form (Gaussian data): every sampler
# draws the right variance, and at 10 steps DPM-Solver++ is closer than DDIM. Here is the step as
# `helpers` runs it inside the same `lax.scan` as DDIM:

# %%
print(inspect.getsource(DPMSolverPP.step))
print("DPM-Solver++ with 10 steps visits t =", make_sampler(schedule, "dpmpp_2m", 10).pairs()[:, 0].tolist())

# %% [markdown]
# ## 3. A guidance interval
#
# Autoguidance doubles the price of every step. Kynkaanniemi et al. (2024, "Applying guidance in a
# limited interval improves sample and distribution quality") found that guidance helps at middle
# noise levels only: at high noise it pulls every sample towards the same few shapes, at low noise
# it does little. `Autoguidance(guide, w, interval=(t_low, t_high))` runs the guide only at
# $t_{low} \le t \le t_{high}$, and a step outside it costs one network evaluation. Their interval,
# $0.28 < \sigma \le 2.9$ in the noise levels of EDM ([Karras et al. 2022](https://arxiv.org/abs/2206.00364)) ($\sigma = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}$),
# is a range of $t$ of our cosine schedule, computed below with the network evaluations per sample:

# %%
sigma = np.sqrt((1 - np.asarray(schedule.alpha_bars)) / np.asarray(schedule.alpha_bars))  # EDM's noise level
inside = np.flatnonzero((sigma > 0.28) & (sigma <= 2.9))
interval = (int(inside[0]), int(inside[-1]))
print(f"0.28 < sigma <= 2.9 is {interval[0]} <= t <= {interval[1]} of our T = {T} steps")
print(f"{'setting':34s} {'guided everywhere':>17s} {'in the interval':>15s} {'unguided':>8s}")
for name, steps_e in (("ddim", 100), ("ddim", 50), ("dpmpp_2m_sde", 25), ("dpmpp_2m_sde", 10)):
    smp = make_sampler(schedule, name, min(steps_e, MAX_STEPS), 1.0)
    print(f"{name + '-' + str(smp.steps):34s} {network_evaluations(smp, guided=True):17d} "
          f"{network_evaluations(smp, interval, guided=True):15d} {network_evaluations(smp):8d}")

# %% [markdown]
# ## 4. Quality per network evaluation
#
# Which of these draws the best digits for its cost? Each setting below draws 1,000 samples (the
# main job's N, so its FD compares with the docs' Results page) from the same noise, with the
# preset's $w$ everywhere, in the interval, or off, and is scored. The cost of a setting is its
# number of network evaluations per sample (NFE). One noise seed per setting; the preset's own
# setting is drawn with three, to show how far the same setting moves between seeds.

# %%
N_SWEEP = 64 if tutorial.quick() else 1000
w = cfg.autoguidance_scale
SWEEP = [  # (sampler, eta, steps, guidance)
    ("ddim", 1.0, 100, "all"), ("ddim", 1.0, 50, "all"), ("ddim", 0.0, 50, "all"), ("dpmpp_2m", 0.0, 50, "all"),
    ("dpmpp_2m_sde", 0.0, 10, "all"), ("dpmpp_2m_sde", 0.0, 25, "all"), ("dpmpp_2m_sde", 0.0, 50, "all"),
    ("dpmpp_2m_sde", 0.0, 50, "interval"), ("dpmpp_2m_sde", 0.0, 50, "off"),
]
if tutorial.quick():  # a check of the code: each setting compiles once, so only a few of them
    SWEEP = SWEEP[:2]
PRESET_SETTING = (cfg.sampler, cfg.eta if cfg.sampler == "ddim" else 0.0, min(cfg.sample_steps, MAX_STEPS), "all")
if PRESET_SETTING not in SWEEP:  # e.g. the tiny preset's sampler
    SWEEP.append(PRESET_SETTING)
sweep_rows = []
print(f"{N_SWEEP} samples per setting, autoguidance w = {w:g}")
print(f"{'setting':32s} {'seed':>4s} {'NFE':>4s} {'seconds':>8s} {'FD':>7s} {'confident':>9s}  classes")
for sampler_name, eta_s, steps_s, guidance in SWEEP:
    steps_s = min(steps_s, MAX_STEPS)
    ivl = interval if guidance == "interval" else None
    is_preset = (sampler_name, eta_s, steps_s, guidance) == PRESET_SETTING
    for seed in ((0, 1, 2) if is_preset else (0,)):
        t0 = time.perf_counter()
        x = np.asarray(sample(ema_model, schedule, jax.random.key(seed), N_SWEEP, sampler=sampler_name,
                              steps=steps_s, eta=eta_s, prediction=cfg.prediction,
                              autoguidance=None if guidance == "off" else guided(w, ivl)))
        seconds = time.perf_counter() - t0
        q = evaluator.evaluate(x)
        nfe = network_evaluations(make_sampler(schedule, sampler_name, steps_s, eta_s), ivl, guidance != "off")
        name = f"{sampler_name}{f' eta={eta_s:g}' if sampler_name == 'ddim' else ''}-{steps_s}, guided {guidance}"
        sweep_rows.append(dict(name=name, sampler=sampler_name, guidance=guidance, seed=seed, nfe=nfe, preset=is_preset,
                               fd=q["frechet_distance"], confident=q["confident_share"]))
        print(f"{name:32s} {seed:4d} {nfe:4d} {seconds:8.1f} {q['frechet_distance']:7.1f} "
              f"{q['confident_share']:9.1%}  {q['min_class_share']:.1%}-{q['max_class_share']:.1%}")

# %%
fig, ax = plt.subplots(figsize=(8, 4.5))
seen_nfe = []  # settings of equal NFE are drawn side by side (4% apart) so that none hides another
for name in dict.fromkeys(r["name"] for r in sweep_rows):
    mine = [r for r in sweep_rows if r["name"] == name]
    fds = [r["fd"] for r in mine]
    x_pos = mine[0]["nfe"] * 1.04 ** seen_nfe.count(mine[0]["nfe"])
    seen_nfe.append(mine[0]["nfe"])
    ax.errorbar(x_pos, np.mean(fds), yerr=[[np.mean(fds) - min(fds)], [max(fds) - np.mean(fds)]],
                fmt="o" if mine[0]["sampler"] == "ddim" else "s", capsize=3, label=name)
ax.set(xscale="log", xlabel="network evaluations per sample (NFE)", ylabel="Frechet distance (lower is better)",
       title=f"{N_SWEEP} samples per setting (the preset's setting: mean and range of three seeds)")
ax.grid(alpha=0.3)
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()
tutorial.show(fig, "quality_per_nfe")

# %% [markdown]
# What the sweep shows (at N = 1,000 one setting's FD moves by several points between noise seeds:
# the preset's three seeds give its range, the bar on the pink square; settings of equal NFE are drawn
# slightly apart, so that none hides another):
#
# - **The preset's setting is among the best per evaluation**: DPM-Solver++(2M) SDE with 50 steps,
#   guided at every step (100 evaluations), has the lowest FD of the 100-evaluation settings on
#   seed 0, and its three seeds are all at least 90% confident; the deterministic solvers and the
#   guidance interval below lie within its seed spread (exercise 2).
# - **Twice the evaluations buy nothing**: DDIM-100 with $\eta = 1$ (200 evaluations) scores a higher
#   FD than any of the preset's three seeds, and so does DDIM-50 with $\eta = 1$ (100).
# - **Deterministic solvers at 100 evaluations** (DDIM with $\eta = 0$, DPM-Solver++(2M) without
#   noise) reach an FD inside the preset's range, with fewer confident digits than any of its seeds.
# - **Fewer steps cost quality**: 25 steps (50 evaluations) land above the preset's range, and 10
#   steps are far worse on every figure.
# - **The guidance interval** saves about 40% of the evaluations (58 instead of 100) at an FD inside
#   the preset's range, with slightly fewer confident digits than any of its seeds: a cheaper option,
#   not a free one.
# - **The guide is worth its evaluations**: without it, 50 steps (50 evaluations) score an FD about
#   twice that of 25 guided steps at the same cost, with fewer confident digits.
#
# ## Summary
#
# - Autoguidance extrapolates away from the run's own early EMA weights: at $w = 2$ it more than
#   halves the Frechet distance and raises the confident share, for a second network evaluation
#   per step.
# - DPM-Solver++(2M) reuses the previous step's estimate for second-order accuracy at one network
#   evaluation per step; its SDE form with 50 guided steps (100 evaluations) beats DDIM with twice
#   the evaluations, and is what the `cpu` preset samples with.
# - A guidance interval is a cheaper, slightly less confident alternative; dropping the guide, or
#   going down to 25 steps or fewer, costs clearly.
# - Scores of 1,000 samples move with the noise seed: compare settings against that spread.

# %% [markdown]
# ## Exercises
#
# Each takes a minute or less at the `cpu` preset; the solutions are in collapsed cells (click to
# expand).
#
# 1. Score the guide alone, as section 1 sampled it. How far below the final model does it score,
#    and why can extrapolating away from it still help?
# 2. Section 4 drew the preset's setting with three seeds. How far apart are the three FDs, and
#    which differences between settings in the table are larger than that?

# %% jupyter={"source_hidden": true}
# Solution 1: the guide makes the same kinds of mistakes as the final model, only more of them; the
# difference between the two points away from those mistakes (section 1).
if guide is not None:
    q = evaluator.evaluate(np.asarray(sample(guide, schedule, jax.random.key(21), n_score, steps=steps, eta=eta,
                                             prediction=cfg.prediction)))
    print(f"the guide alone (EMA weights at step {run_state.guide.step}): FD {q['frechet_distance']:.1f}, "
          f"{q['confident_share']:.1%} confident; the final model alone: FD {ag_scores[1.0]['frechet_distance']:.1f}, "
          f"{ag_scores[1.0]['confident_share']:.1%}")

# %% jupyter={"source_hidden": true}
# Solution 2: the seeds' spread of the preset's setting, against each other setting's gap to its mean.
preset_fds = [r["fd"] for r in sweep_rows if r["preset"]]
spread, mean_fd = max(preset_fds) - min(preset_fds), float(np.mean(preset_fds))
print(f"the preset's setting over three seeds: FD {min(preset_fds):.1f}-{max(preset_fds):.1f} (spread {spread:.1f})")
for r in sweep_rows:
    if not r["preset"]:
        verdict = "larger than the spread" if abs(r["fd"] - mean_fd) > spread else "within the spread"
        print(f"  {r['name']:32s} FD {r['fd']:7.1f}: {r['fd'] - mean_fd:+7.1f} from the preset's mean, {verdict}")
