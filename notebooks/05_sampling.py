# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Sampling: DDPM, DDIM and what each step does
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), 2026-12-04, commit fd9d6b3; the notebook took 8 min 52 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# Training taught the network to predict noise. Sampling runs the process backwards: start from
# pure noise and remove a little of it at a time. This notebook uses the model trained in notebook
# 04 (it trains it first if it is missing) and compares the two classic samplers:
#
# - **DDPM** (Ho et al. 2020): 1,000 small stochastic steps, each one the reverse of a forward step.
# - **DDIM** (Song et al. 2021): the same trained model, but large steps over a subsequence of
#   timesteps; with $\eta = 0$ it is deterministic, with $\eta = 1$ it is DDPM on that subsequence.
#
# We look at speed against quality, the effect of $\eta$, autoguidance, EMA against raw weights, the
# real reverse trajectory of a few digits, and interpolation between two noise seeds.

# %%
import inspect
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import helpers  # noqa: F401
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers.metrics import get_evaluator
from helpers.plotting import plot_trajectory, save_trajectory_gif
from helpers import data
from helpers.losses import to_x0_and_eps
from helpers.sampling import Autoguidance, DDIMSampler, ddim_pairs, sample
from helpers.training import noise_schedule

PRESET = tutorial.setup("05_sampling")
cfg, run_state, summary = tutorial.trained_run(PRESET)
T = cfg.num_timesteps
ema_model, raw_model, schedule = run_state.ema.model, run_state.model, noise_schedule(cfg)
print(f"model from {tutorial.tutorial_run_dir(PRESET)}: step {summary['steps']}, T = {T}, "
      f"prediction {cfg.prediction!r}")

# %% [markdown]
# ## 1. DDIM's timesteps: explicit (t, t_prev) pairs
#
# A DDIM sampler with $N$ steps visits $N$ evenly spaced timesteps from $T-1$ down to 0; each step
# goes from $t$ to the next one, $t_{prev}$, and the last step goes to "-1", the clean image
# ($\bar\alpha_{-1} = 1$). Writing the pairs out avoids the off-by-one errors of `t - T // N`.

# %%
print("DDIM-10 pairs (t, t_prev):", [tuple(int(v) for v in p) for p in ddim_pairs(T, 10)])

# %% [markdown]
# ## 2. One DDIM step
#
# Each step (Song et al. 2021, eq. 12) uses the network's output at $t$ twice. First it reads off
# the clean image and the noise it believes are in $x_t$: $\hat x_0$ and $\hat\varepsilon$ (for a
# $v$-predicting model, $\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v$ and
# $\hat\varepsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,\hat v$; notebook 04). Then it
# rebuilds the image at the earlier timestep from them, as the forward process would have made it:
#
# $$x_{t_{prev}} = \sqrt{\bar\alpha_{t_{prev}}}\,\hat x_0 +
#   \sqrt{1-\bar\alpha_{t_{prev}}-\sigma_t^2}\,\hat\varepsilon + \sigma_t z,
# \qquad \sigma_t = \eta\,\sqrt{\frac{1-\bar\alpha_{t_{prev}}}{1-\bar\alpha_t}}\,
#   \sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{t_{prev}}}}\quad\text{(eq. 16)}.$$
#
# The first term is "the clean image, scaled to $t_{prev}$'s signal level"; the second points back
# along the predicted noise, with less of it than at $t$; the third is fresh noise $z$, none at
# $\eta = 0$. `helpers.sampling.DDIMSampler` is exactly this:

# %%
print(inspect.getsource(DDIMSampler.sigma))
print(inspect.getsource(DDIMSampler.step))

# %% [markdown]
# One step by hand, from pure noise at $t = T-1$ to the next timestep of DDIM-10 (the sampler clips
# $\hat x_0$ to the image range [-1, 1] first):

# %%
ddim10 = DDIMSampler(schedule, steps=10, eta=0.0)
t, t_prev = (int(v) for v in ddim10.pairs()[0])
x_t = jax.random.normal(jax.random.key(3), (4, 32, 32, 1))
t_batch = jnp.full((4,), t)
x0_hat, eps_hat = to_x0_and_eps(cfg.prediction, ema_model(x_t, t_batch, None), x_t, schedule, t_batch)
x0_hat = jnp.clip(x0_hat, -1, 1)
x_prev = ddim10.step(x_t, x0_hat, eps_hat, t, t_prev, noise=jnp.zeros_like(x_t))
print(f"t = {t} -> t_prev = {t_prev}: sqrt(alpha_bar) {float(jnp.sqrt(schedule.alpha_bar_at(t))):.3f} -> "
      f"{float(jnp.sqrt(schedule.alpha_bar_at(t_prev))):.3f}")
fig = tutorial.plot_image_rows({f"x_t at t = {t} (pure noise)": x_t, f"x0_hat, estimated at t = {t}": x0_hat,
                                f"x_t_prev at t_prev = {t_prev}": x_prev}, ncols=4, size=0.9)
tutorial.show(fig, "one_ddim_step")

# %% [markdown]
# From pure noise the first $\hat x_0$ is a blurry average of digits: at $t = T-1$ the network can
# only guess. The new $x_{t_{prev}}$ is still mostly noise, with a faint trace of that guess; the
# remaining steps sharpen it. The whole loop is one `lax.scan` under `jit`: one compilation, no
# Python between steps.
#
# ## 3. Steps against quality and time
#
# Same noise seed for every row, so differences come from the sampler alone.

# %%
n = 8 if PRESET == "tiny" else 40
key = jax.random.key(5)
settings = [("ddim", s) for s in (10, 20, 50, 100, 200) if s <= T] + [("ddpm", T)]
results, timings = {}, []
for sampler, steps in settings:
    sample(ema_model, schedule, key, n, sampler=sampler, steps=steps, prediction=cfg.prediction)  # compile
    t0 = time.perf_counter()
    x = sample(ema_model, schedule, key, n, sampler=sampler, steps=steps, prediction=cfg.prediction)
    x.block_until_ready()
    dt = time.perf_counter() - t0
    results[(sampler, steps)] = np.asarray(x)
    timings.append((f"{sampler.upper()}-{steps}", steps, dt))

print(f"{'sampler':10s} {'network calls':>13s} {'seconds for ' + str(n):>16s} {'ms per call':>11s}")
for name, steps, dt in timings:
    print(f"{name:10s} {steps:13d} {dt:16.2f} {1000 * dt / steps:11.1f}")

# %%
ncols = 10
fig = tutorial.plot_image_rows({f"{sampler.upper()}-{steps}": results[(sampler, steps)] for sampler, steps in settings}, ncols)
tutorial.show(fig, "steps_vs_quality")

# %% [markdown]
# Time grows about linearly with the number of network calls: most rows take 47-50 ms per call
# (the last column; a single timing on a shared machine can come out slower, as one row here). In the
# grid, DDIM-10 already draws the same digits as DDIM-200; by eye, more steps change almost nothing.
# The DDIM rows share their noise and, with $\eta = 0$, are deterministic, so they refine the *same*
# digits; DDPM adds fresh noise at each of its 1,000 steps, so from the same start it draws different
# digits, at ten times the cost of DDIM-100. Whether those are *better* digits is a question for
# section 5.
#
# ## 4. Eta: from deterministic DDIM to stochastic DDPM

# %%
etas = (0.0, 0.25, 0.5, 0.75, 1.0)
steps = min(50, T)
fig = tutorial.plot_image_rows({f"DDIM-{steps}, eta = {eta}": sample(ema_model, schedule, key, ncols, sampler="ddim", steps=steps,
                                                             eta=eta, prediction=cfg.prediction) for eta in etas})
tutorial.show(fig, "eta_sweep")

# %% [markdown]
# At $\eta = 0$ the map from noise to digit is deterministic. As $\eta$ grows, each step injects
# fresh noise, so the digits drift away from the $\eta = 0$ ones: by $\eta = 0.5$ most columns draw
# a different digit from the same start. Some strokes come out a little rougher, because each large
# step has to remove part of the noise it just added. Ten digits cannot tell us which row is better.
#
# ## 5. Measuring it: which sampler draws the best digits?
#
# Ten digits per row are enough to see *what* changes, not *how often* a digit comes out
# malformed. So we score a few hundred samples per setting with the independent MNIST classifier
# of notebook 08: the share it classifies with confidence above 0.9 and the Frechet distance in its
# feature space (lower is better; notebook 08 explains both). Every setting starts from the same
# noise, so the comparison is paired.

# %%
evaluator = get_evaluator(quick=PRESET == "tiny")
n_score = 32 if PRESET == "tiny" else 300
score_steps = [s for s in ((10, 25) if PRESET == "tiny" else (25, 50, 100)) if s <= T]  # tiny: a code check
scores = {}
print(f"{n_score} samples per setting, the same noise for all")
print(f"{'sampler':9s} {'eta':>4s} {'seconds':>8s} {'FD':>7s} {'conf > 0.9':>10s}")
for steps_s in score_steps:
    for eta in (0.0, 1.0):
        t0 = time.perf_counter()
        x = np.asarray(sample(ema_model, schedule, jax.random.key(21), n_score, steps=steps_s, eta=eta,
                              prediction=cfg.prediction))
        dt = time.perf_counter() - t0  # includes one compilation per number of steps
        q = evaluator.evaluate(x)
        scores[(steps_s, eta)] = q
        print(f"DDIM-{steps_s:<4d} {eta:4.1f} {dt:8.1f} {q['frechet_distance']:7.1f} {q['confident_share']:10.1%}")
t0 = time.perf_counter()
x = np.asarray(sample(ema_model, schedule, jax.random.key(21), n_score, sampler="ddpm", prediction=cfg.prediction))
dt = time.perf_counter() - t0
q = scores["ddpm"] = evaluator.evaluate(x)
print(f"DDPM-{T:<4d} {1.0:4.1f} {dt:8.1f} {q['frechet_distance']:7.1f} {q['confident_share']:10.1%}")
test_images, _ = data.load_split("mnist", "test", limit=n_score)
q = scores["real"] = evaluator.evaluate(np.asarray(data.to_model_range(jnp.asarray(test_images))))
print(f"{n_score} real test digits        {q['frechet_distance']:7.1f} {q['confident_share']:10.1%}  "
      f"(the best any sampler can score at this N)")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for eta, style in ((0.0, "o--"), (1.0, "o-")):
    axes[0].plot(score_steps, [100 * scores[(s, eta)]["confident_share"] for s in score_steps], style,
                 label=f"eta = {eta:g}")
    axes[1].plot(score_steps, [scores[(s, eta)]["frechet_distance"] for s in score_steps], style, label=f"eta = {eta:g}")
for name, style in (("ddpm", "tab:red"), ("real", "tab:green")):
    label = f"DDPM-{T}" if name == "ddpm" else f"real test digits (N = {n_score})"
    axes[0].axhline(100 * scores[name]["confident_share"], color=style, ls=":", label=label)
    axes[1].axhline(scores[name]["frechet_distance"], color=style, ls=":", label=label)
axes[0].set(xlabel="DDIM steps", ylabel="% classified with confidence > 0.9", xscale="log")
axes[1].set(xlabel="DDIM steps", ylabel="Frechet distance (lower is better)", xscale="log")
for ax in axes:
    ax.set_xticks(score_steps, [str(s) for s in score_steps])
    ax.legend(fontsize=7)
fig.tight_layout()
tutorial.show(fig, "sampler_scores")

# %% [markdown]
# What the scores show (300 samples per setting: a confident share near 80% has a standard error
# of about 2.3 points, so only differences of 5 points or more are clear):
#
# - **With $\eta = 0$, more steps barely help**: the confident share stays within two points from 25 to
#   100 steps, and the Frechet distance improves only a little. This is what the grid in section 3
#   suggested.
# - **$\eta = 1$ is better at 25 and 100 steps**: several points more confident samples and a
#   clearly lower Frechet distance. At 50 steps $\eta = 1$ is a few points more confident but no lower
#   in Frechet distance: within noise here.
# - **DDPM-1000 scores about like DDIM-100 with $\eta = 1$** (the same sampler on a ten-times shorter
#   subsequence), at ten times the network evaluations.
# - **Real test digits** set the scale at this N: their Frechet distance is far above the 11 they
#   score at N = 1,000 (the distance shrinks with N; notebook 08), so compare these distances only
#   with each other, never with the Results page's.
# - Why fresh noise helps: a deterministic sampler carries every early mistake of an imperfect model
#   through to the end, along one path; injecting noise and removing it again lets later steps,
#   where the model is more accurate, correct those mistakes. The better the model, the smaller the
#   gain (DDIM's authors found $\eta = 0$ best for fully trained models at few steps).
#
# This is why the `cpu` preset samples stochastically (DDIM with $\eta = 1$ here, a stochastic
# DPM-Solver++ in section 7): a measured choice for a model trained for 20 minutes, not a rule.
# Lesson learned while building this tutorial: we first compared only step counts at $\eta = 0$,
# found them all alike and concluded that "sampling is not the bottleneck"; scoring $\eta$ as well
# proved that wrong.
#
# ## 6. Autoguidance: guiding the model with a weaker version of itself
#
# Section 5 tuned the sampler around one fixed network. Autoguidance (Karras et al. 2024, "Guiding
# a diffusion model with a bad version of itself") changes what the network says at every step. Take
# a *weaker* model $D_0$ that makes the same kinds of mistakes as ours, $D_1$, only more of them,
# and use
#
# $$\text{out} = D_0(x_t, t) + w\,\big(D_1(x_t, t) - D_0(x_t, t)\big), \qquad w > 1.$$
#
# The difference $D_1 - D_0$ points from "what an undertrained model believes" towards "what more
# training taught", and $w > 1$ goes further in that direction. It is the same extrapolation as
# classifier-free guidance (notebook 07), but it needs no labels, so it works for our unconditional
# model. The weak model costs nothing extra here: training kept a frozen copy of the EMA weights
# at about 15% of the run (`guide_fraction`), and `sample(..., autoguidance=Autoguidance(guide, w))` runs
# both networks at every step (so sampling takes twice as long). $w = 1$ is the plain model
# (`autoguidance=None`: the guide is not run at all).

# %%
if run_state.guide is not None and run_state.guide.step >= 0:
    guide = run_state.guide.model
    print(f"guide: the EMA weights at step {run_state.guide.step} of {summary['steps']}")
else:  # e.g. the paper preset, trained without guide_fraction: every w below then equals w = 1
    guide = None
    print("this run kept no guide model (train with guide_fraction set): autoguidance is off below")


def guided(w: float):
    """Autoguidance at weight w with the run's guide; None (the plain model) at w = 1 or without a guide."""
    return None if guide is None or w == 1 else Autoguidance(guide, w)


ws = sorted({1.0, 1.5, cfg.autoguidance_scale, 3.0})
rows = {} if guide is None else {"the guide alone": sample(guide, schedule, key, ncols, steps=cfg.sample_steps,
                                                            eta=cfg.eta, prediction=cfg.prediction)}
rows.update({f"w = {w:g}" + (" (the final model alone)" if w == 1 else ""):
             sample(ema_model, schedule, key, ncols, steps=cfg.sample_steps, eta=cfg.eta,
                    prediction=cfg.prediction, autoguidance=guided(w)) for w in ws})
fig = tutorial.plot_image_rows(rows)
tutorial.show(fig, "autoguidance_rows")

# %%
ag_ws = sorted({1.0, 1.5, 2.0, cfg.autoguidance_scale, 2.5, 3.0})
ag_scores = {}
print(f"DDIM-{cfg.sample_steps}, eta = {cfg.eta:g}, {n_score} samples per setting, the same noise for all")
print(f"{'w':>5s} {'seconds':>8s} {'FD':>7s} {'conf > 0.9':>10s} {'classes min-max':>16s}")
for w in ag_ws:
    t0 = time.perf_counter()
    x = np.asarray(sample(ema_model, schedule, jax.random.key(21), n_score, steps=cfg.sample_steps, eta=cfg.eta,
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
# What autoguidance does, in the rows above (same noise, same sampler noise; the top row is the
# guide alone, then the final model alone, then guided with growing $w$). The guide draws thin,
# broken or ambiguous shapes; the final model draws better ones but still some malformed digits;
# with guidance most of those are repaired (the third and seventh columns become clean 3s, the ninth
# a 4, the last a 6), sometimes into another digit than the unguided shape suggested. Between $w = 2$
# and 3 most columns keep their digit (the first turns into a 0), with bolder strokes at 3.
#
# The scores (300 samples per $w$; standard error about 1.7 points near 90% confident):
#
# - **The confident share jumps** by about ten points at $w = 1.5$ and keeps rising slowly, to
#   94-96% from $w = 2$ on.
# - **The Frechet distance falls to less than a third**, to its lowest at $w = 2$, then rises again
#   as the stronger extrapolation pushes the digits past the real ones (bolder, more uniform strokes).
# - **No class is lost**: every class keeps between 6% and 14% of the samples at every $w$, so the
#   gain is not the classifier being confident on one easy digit.
#
# The `cpu` preset uses $w = 2$, chosen on 1,000 samples of the main job's runs with several noise
# seeds (the docs' Results page): with the preset's batch of 64, $w = 2.25$ gave a higher Frechet
# distance than $w = 2$ at the same confident share. Why does a worse model help? Karras et
# al. argue that an under-trained model errs in the same directions as a well-trained one, only
# more: the difference between the two points away from those errors, towards the typical digits.
# The guide must be a version of *the same* model, so that both make the same kinds of mistakes;
# here it is the EMA weights at about 15% of the run (`guide_fraction`). The price is a second network
# evaluation at every step.
#
# ## 7. Fewer network evaluations: DPM-Solver++ and a guidance interval
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
# The solver visits timesteps evenly spaced in $\lambda$, not in $t$: on DDIM's even $t$ the last
# steps are long jumps in $\lambda$, where a straight-line extrapolation overshoots. The tests check
# all of this on data whose ideal denoiser is known in closed form (Gaussian data): every sampler
# draws the right variance, and at 10 steps DPM-Solver++ is closer than DDIM. Here is the step as
# `helpers` runs it inside the same `lax.scan` as DDIM:

# %%
from helpers.sampling import DPMSolverPP, lambda_pairs, make_sampler, network_evaluations

print(inspect.getsource(DPMSolverPP.step))
print("DPM-Solver++ with 10 steps visits t =", lambda_pairs(schedule, 10)[:, 0].tolist())

# %% [markdown]
# Autoguidance doubles the price of every step. Kynkaanniemi et al. (2024, "Applying guidance in a
# limited interval improves sample and distribution quality") found that guidance helps at middle
# noise levels only: at high noise it pulls every sample towards the same few shapes, at low noise
# it does little. `Autoguidance(guide, w, interval=(t_low, t_high))` runs the guide only at
# $t_{low} \le t \le t_{high}$, and a step outside it costs one network evaluation. Their interval,
# $0.28 < \sigma \le 2.9$ in EDM's noise levels ($\sigma = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}$),
# is $167 \le t \le 785$ of our cosine schedule. Network evaluations per sample:

# %%
interval = (167, 785) if T == 1000 else (T // 6, 4 * T // 5)
print(f"{'setting':34s} {'guided everywhere':>17s} {'in the interval':>15s} {'unguided':>8s}")
for name, steps_e in (("ddim", 100), ("ddim", 50), ("dpmpp_2m_sde", 25), ("dpmpp_2m_sde", 10)):
    smp = make_sampler(schedule, name, min(steps_e, T), 1.0)
    print(f"{name + '-' + str(smp.steps):34s} {network_evaluations(smp, guided=True):17d} "
          f"{network_evaluations(smp, interval, guided=True):15d} {network_evaluations(smp):8d}")

# %% [markdown]
# Which of these draws the best digits per network evaluation? `benchmarks/sampler_sweep.py`
# answers it on a 20-minute `cpu` run: 1,000 samples per setting (the main job's N, so the
# Frechet distances compare with the Results page), autoguidance $w = 2$ everywhere, in the
# interval, or off. Its results are committed with the run, machine and commit that made them:

# %%
import json

sweep = json.loads((tutorial.ROOT / "docs" / "assets" / "sampler_sweep.json").read_text())
print(f"benchmarks/sampler_sweep.py on {sweep['run']} (step {sweep['steps']:,}), {sweep['machine']}, "
      f"commit {sweep['commit']}")
rows = sorted((r for r in sweep["rows"] if r["n"] == 1000), key=lambda r: (r["sampler"], r["guidance"], r["nfe"]))
print(f"{'setting':30s} {'NFE':>5s} {'seconds':>8s} {'FD':>7s} {'confident':>9s}  classes")
for r in rows:
    print(f"{r['setting']:30s} {r['nfe']:5d} {r['seconds']:8.1f} {r['fd']:7.2f} {r['confident']:9.1%}  "
          f"{r['min_class']:.1%}-{r['max_class']:.1%}  (seed {r['seed']})")

# %%
fig, ax = plt.subplots(figsize=(8, 4.5))
for line in sorted({(r["sampler"], r["eta"], r["guidance"]) for r in rows}):
    mine = [r for r in rows if (r["sampler"], r["eta"], r["guidance"]) == line]
    nfes = sorted({r["nfe"] for r in mine})
    fds = [np.mean([r["fd"] for r in mine if r["nfe"] == k]) for k in nfes]
    label = f"{line[0]}{' eta=%g' % line[1] if line[0] == 'ddim' else ''}, guidance {line[2]}"
    ax.plot(nfes, fds, "o-", label=label)
ax.set(xscale="log", xlabel="network evaluations per sample", ylabel="Frechet distance (lower is better)")
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
fig.tight_layout()
tutorial.show(fig, "sampler_sweep")

# %% [markdown]
# What the sweep shows (the table above; at N = 1,000 the Frechet distance of one setting moves by
# several points between noise seeds, so the settings that compare closely were drawn with three):
#
# - **Half the network evaluations for the same digits.** DPM-Solver++(2M) SDE with 50 steps and
#   DDIM-50 with $\eta = 1$, both guided at every step (100 evaluations), score within the seeds'
#   range of DDIM-100 (200 evaluations). The `cpu` preset now samples with the first.
# - **Fewer still is not free**: at 70 evaluations and below, the confident share drops.
# - **Stochastic beats deterministic again**: the SDE form against the ODE form, $\eta = 1$ against
#   $\eta = 0$, as section 5 found for DDIM.
# - **The guidance interval hurts this model**: guiding only in the middle noise levels raises the
#   Frechet distance well above guiding everywhere, and so does skipping only the low-noise steps.
#   What helped ImageNet does not transfer as it is; that is why it is measured, not assumed.
#
# ## 8. EMA weights against raw weights

# %%
x_ema = sample(ema_model, schedule, key, 20, steps=steps, prediction=cfg.prediction)
x_raw = sample(raw_model, schedule, key, 20, steps=steps, prediction=cfg.prediction)
fig = tutorial.plot_image_rows({"EMA weights": x_ema, "raw (last step's) weights": x_raw})
tutorial.show(fig, "ema_vs_raw")

# %% [markdown]
# Same noise, two sets of weights. At the end of a cosine decay down to 1% of the peak learning
# rate the raw weights barely move, so the EMA (which averages roughly the last thousand steps) and
# the raw weights draw practically the same digits here. The difference is large in the middle of
# training, when the raw weights still jump around: that is when the EMA pays off (and why the
# scripts always sample from it).
#
# ## 9. The reverse trajectory
#
# What the sampler actually does: $x_t$ after each step (top rows) and, at the same steps, the
# model's current guess of the clean image $\hat x_0$ (bottom rows).

# %%
steps_traj = min(100, T)
x, (xs, x0s, pairs) = sample(ema_model, schedule, jax.random.key(7), 4, steps=steps_traj,
                             prediction=cfg.prediction, return_trajectory=True)
fig = plot_trajectory(xs, pairs, num_frames=10, title=f"x_t along DDIM-{steps_traj}")
tutorial.show(fig, "trajectory_xt")
fig = plot_trajectory(x0s, pairs, num_frames=10, at="t", title="the model's guess of x_0, made at each step's t")
tutorial.show(fig, "trajectory_x0")

# %% [markdown]
# The noisy $x_t$ (first figure) stays mostly noise for the first half of the steps; the digit shows
# through from about $t = 545$ and is clean only at the end. The $\hat x_0$ guesses (second figure)
# tell the real story: the model commits to *which* digit early, as a blurry average (three of the
# four rows show their final digit by $t = 777$; the last row starts as something like a 0 and
# settles by $t = 555$ on a malformed shape, of the kind autoguidance repairs, unused here), and
# spends the later steps on stroke width and detail. The same process as an animation:

# %%
gif = save_trajectory_gif(xs, tutorial.tutorial_run_dir(PRESET) / "trajectory.gif", ncols=4, frames=40)
tutorial.show_gif(gif, alt="reverse process animation")

# %% [markdown]
# ## 10. Interpolating between two noise seeds
#
# DDIM with $\eta = 0$ is a deterministic function from noise to images, so we can walk between two
# starting points and watch one digit turn into another. The walk must be spherical (`slerp`): a
# straight line between two Gaussian draws passes through points with too little noise (the
# midpoint has about 71% of the norm), which the model has never seen at $t = T$.

# %%
# Spherical linear interpolation (Shoemake 1985).
def slerp(z0: jax.Array, z1: jax.Array, alphas) -> jax.Array:
    """One noise tensor per alpha on the great circle from z0 to z1.

    Gaussian noise in many dimensions lies near a sphere of radius sqrt(dim); a straight line
    between two draws dips inside it and looks like too little noise to the model.
    """
    a, b = z0.reshape(-1), z1.reshape(-1)
    omega = jnp.arccos(jnp.clip(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)), -1.0, 1.0))
    alphas = jnp.asarray(alphas, jnp.float32)[:, None]
    out = (jnp.sin((1 - alphas) * omega) * a + jnp.sin(alphas * omega) * b) / jnp.sin(omega)
    return out.reshape((-1, *z0.shape))


shape = (32, 32, 1)
z = jax.random.normal(jax.random.key(11), (2, *shape))
alphas = np.linspace(0, 1, 10)
z_path = slerp(z[0], z[1], alphas)
z_lerp = (1 - alphas[:, None, None, None]) * z[0] + alphas[:, None, None, None] * z[1]
print("norm along slerp:", np.round(np.linalg.norm(np.asarray(z_path).reshape(10, -1), axis=1), 1))
print("norm along a straight line:", np.round(np.linalg.norm(np.asarray(z_lerp).reshape(10, -1), axis=1), 1))
x_s = sample(ema_model, schedule, key, 10, steps=steps, prediction=cfg.prediction, x_T=z_path)
x_l = sample(ema_model, schedule, key, 10, steps=steps, prediction=cfg.prediction, x_T=z_lerp)
fig = tutorial.plot_image_rows({"slerp": x_s, "straight line": x_l})
tutorial.show(fig, "interpolation")

# %% [markdown]
# Along the slerp path (top) the norm stays about $\sqrt{1024} = 32$ and the digit morphs from the
# first seed's 5 to the second's 2. Along the straight line (bottom) the middle frames start from
# noise with only 70% of the expected norm, which the model has never seen. With this model the two
# rows happen to look alike: both pass through a thin 1 on the way, and the straight line's middle
# frames are plain, thin 1s (less norm reads as "less ink"). Slerp is the correct path by
# construction; this model is simply not very sensitive to the difference for these two seeds.
#
# ## Summary
# - DDIM needs far fewer steps than DDPM's 1,000; with $\eta = 0$, 25 steps score about as well as
#   100, and DDIM-10 is a fast preview. DDPM-1000 scores about like DDIM-100 with $\eta = 1$.
# - Measure, don't eyeball: for a briefly trained model, stochastic sampling ($\eta = 1$) scores
#   better than deterministic DDIM. Sample from the EMA weights.
# - DPM-Solver++(2M) reuses the previous step's estimate for second-order accuracy at one network
#   evaluation per step; its SDE form with 50 steps and autoguidance (100 evaluations) draws digits
#   as good as DDIM-100's (200), and is what the `cpu` preset samples with.
# - Autoguidance with the run's own early EMA weights repairs malformed digits: a much higher
#   confident share and less than half the Frechet distance here, for two network evaluations per
#   step.
# - The model decides the digit early and refines it late; slerp walks between noise seeds.

# %% [markdown]
# ## Exercises
#
# Each takes a minute or less at the `cpu` preset; the solutions are in collapsed cells (click to
# expand).
#
# 1. Score DDIM-25 with $\eta = 0.5$ on section 5's noise. Where does it land between $\eta = 0$
#    and $\eta = 1$?
# 2. Score the guide alone, as section 6 sampled it. How far below the final model does it score,
#    and why can extrapolating away from it still help?
# 3. Noise four real test digits to $t = T/2$ with `q_sample` and ask the model once for
#    $\hat x_0$. How close is one network call to the clean digit?

# %% jupyter={"source_hidden": true}
# Solution 1: the same 300 samples' noise as section 5, eta = 0.5.
x = np.asarray(sample(ema_model, schedule, jax.random.key(21), n_score, steps=min(25, T), eta=0.5,
                      prediction=cfg.prediction))
q = evaluator.evaluate(x)
print(f"DDIM-{min(25, T)}, eta = 0.5: FD {q['frechet_distance']:.1f}, {q['confident_share']:.1%} confident "
      f"(eta = 0 and 1 in section 5's table)")

# %% jupyter={"source_hidden": true}
# Solution 2: the guide makes the same kinds of mistakes as the final model, only more of them; the
# difference between the two points away from those mistakes (section 6).
if guide is not None:
    q = evaluator.evaluate(np.asarray(sample(guide, schedule, jax.random.key(21), n_score, steps=cfg.sample_steps,
                                             eta=cfg.eta, prediction=cfg.prediction)))
    print(f"the guide alone (EMA weights at step {run_state.guide.step}): FD {q['frechet_distance']:.1f}, "
          f"{q['confident_share']:.1%} confident; the final model alone: FD {ag_scores[1.0]['frechet_distance']:.1f}, "
          f"{ag_scores[1.0]['confident_share']:.1%}")

# %% jupyter={"source_hidden": true}
# Solution 3: one call at t = T/2 already recovers each digit's shape, blurred.
x0_real = data.to_model_range(jnp.asarray(test_images[:4]))
t_half = jnp.full((4,), T // 2)
x_half = schedule.q_sample(x0_real, t_half, jax.random.normal(jax.random.key(9), x0_real.shape))
x0_guess = jnp.clip(to_x0_and_eps(cfg.prediction, ema_model(x_half, t_half, None), x_half, schedule, t_half)[0], -1, 1)
print(f"mean absolute pixel error of x0_hat at t = {T // 2}: {float(jnp.mean(jnp.abs(x0_guess - x0_real))):.3f} "
      f"(pixels in [-1, 1]; the noisy input's: {float(jnp.mean(jnp.abs(x_half - x0_real))):.3f})")
fig = tutorial.plot_image_rows({"real test digits": x0_real, f"noised to t = {T // 2}": x_half,
                                "x0_hat from one network call": x0_guess}, ncols=4, size=0.9)
tutorial.show(fig, "exercise_one_call_x0")
