# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Sampling: DDPM, DDIM and what each step does
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), commit c1ecbe4; the notebook took 6 min 04 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# Training taught the network to predict the noise in $x_t$ (as $v$, notebook 04). Sampling runs the
# forward process of notebook 02 backwards: start from pure noise and remove a little of it at a
# time. This notebook uses the model trained in notebook 04 (it trains it first if it is missing)
# and the two classic samplers:
#
# - **DDPM** ([Ho et al. 2020](https://arxiv.org/abs/2006.11239)): 1,000 small stochastic steps,
#   each one the reverse of a forward step.
# - **DDIM** ([Song et al. 2021](https://arxiv.org/abs/2010.02502)): the same trained model, but large
#   steps over a subsequence of timesteps; with $\eta = 0$ it is deterministic, with $\eta = 1$ it is
#   DDPM on that subsequence.
#
# We write out both steps, then look at speed against quality (scored as in notebook 05), the effect
# of $\eta$, EMA against raw weights, the real reverse trajectory of a few digits, and interpolation
# between two noise seeds. Notebook 07 then makes sampling faster and better with a guide and a
# higher-order solver.

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
from helpers.sampling import DDIMSampler, make_sampler, max_sample_steps, sample
from helpers.training import noise_schedule

PRESET = tutorial.setup("06_sampling")
cfg, run_state, summary = tutorial.trained_run(PRESET)
T = cfg.num_timesteps
ema_model, raw_model, schedule = run_state.ema.model, run_state.model, noise_schedule(cfg)
MAX_STEPS = max_sample_steps(schedule)  # a sampler's most steps: one per timestep from lambda = -4.8 to t = 0
print(f"model from {tutorial.tutorial_run_dir(PRESET)}: step {summary['steps']}, T = {T}, "
      f"prediction {cfg.prediction!r}")

# %% [markdown]
# ## 1. The DDPM reverse step
#
# The forward process adds a little Gaussian noise at each step, $q(x_t \mid x_{t-1}) =
# \mathcal N(\sqrt{\alpha_t}\,x_{t-1}, \beta_t I)$ with $\alpha_t = 1 - \beta_t$ (notebook 02). For
# small $\beta_t$ the reverse step is Gaussian too. DDPM's sampler (Ho et al. 2020, algorithm 2)
# takes its mean from the network's noise estimate $\hat\varepsilon = \varepsilon_\theta(x_t, t)$:
#
# $$x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\hat\varepsilon\Big)
#   + \sigma_t z, \qquad z \sim \mathcal N(0, I),\quad
#   \sigma_t^2 = \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t,$$
#
# and no noise at the last step ($t = 0$). In words: subtract the part of the predicted noise that
# the forward step added, rescale, and add back a little fresh noise, the spread of
# $q(x_{t-1} \mid x_t, x_0)$ (their eqs. 6-7). Written out as code:

# %%
def ddpm_step(x_t, eps_hat, t: int, z):
    """x_{t-1} from x_t (Ho et al. 2020, algorithm 2, line 4, with sigma_t^2 = beta_tilde_t)."""
    beta_t, alpha_t, ab_t = schedule.betas[t], schedule.alphas[t], schedule.alpha_bars[t]
    ab_prev = schedule.alpha_bars[t - 1] if t > 0 else 1.0
    sigma_t = jnp.sqrt((1 - ab_prev) / (1 - ab_t) * beta_t)
    mean = (x_t - beta_t / jnp.sqrt(1 - ab_t) * eps_hat) / jnp.sqrt(alpha_t)
    return mean + sigma_t * z if t > 0 else mean


# %% [markdown]
# One such step on four test digits noised to $t = T/2$. The collection's samplers do not contain
# this function: DDIM with $\eta = 1$ over all $T$ timesteps (section 3) is the same update written
# with $\hat x_0$ and $\hat\varepsilon$, and `sample(..., sampler="ddpm")` is exactly that. The
# printed difference checks it (the samplers also clip $\hat x_0$ to [-1, 1], which is left out here):

# %%
test_digits, _ = data.load_split("mnist", "test", limit=4)
x0_real = data.to_model_range(jnp.asarray(test_digits))
t_mid = T // 2
t_batch = jnp.full((4,), t_mid)
x_t = schedule.q_sample(x0_real, t_batch, jax.random.normal(jax.random.key(1), x0_real.shape))
x0_hat, eps_hat = to_x0_and_eps(cfg.prediction, ema_model(x_t, t_batch, None), x_t, schedule, t_batch)
z = jax.random.normal(jax.random.key(2), x_t.shape)
x_ddpm = ddpm_step(x_t, eps_hat, t_mid, z)
x_ddim1 = DDIMSampler(schedule, steps=T, eta=1.0).step(x_t, x0_hat, eps_hat, t_mid, t_mid - 1, noise=z)
print(f"t = {t_mid} -> {t_mid - 1}: largest difference between algorithm 2 and DDIM (eta = 1) over all pixels: "
      f"{float(jnp.max(jnp.abs(x_ddpm - x_ddim1))):.1e}; one step moves a pixel by "
      f"{float(jnp.mean(jnp.abs(x_ddpm - x_t))):.3f} on average")

# %% [markdown]
# The two formulas agree to float32 rounding. One step changes little, so DDPM needs all $T = 1{,}000$
# of them, one network evaluation each: the slow part that DDIM removes.
#
# ## 2. DDIM's timesteps: explicit (t, t_prev) pairs
#
# A DDIM sampler with $S$ steps evaluates the network at $S$ noise levels evenly spaced in
# $\lambda = \log(\alpha_t / \sigma_t)$, half the log signal-to-noise ratio, from $\lambda = -4.8$ (a signal of
# 0.8% of the noise) to the cleanest timestep, each at the nearest timestep. It does not start at $T-1$:
# the cosine schedule's last betas are clipped (notebook 02), so its last few timesteps are far noisier
# ($\lambda_{999} = -9.9$) and a step there changes nothing. Each step goes from $t$ to the next one,
# $t_{prev}$, and the last step goes to "-1", the clean image ($\bar\alpha_{-1} = 1$), so the last
# evaluation lands where it still acts. Writing the pairs out avoids the off-by-one errors of `t - T // S`.
# Every sampler in these notebooks but DDPM uses this one time grid (`helpers.sampling.time_grid`).

# %%
print("DDIM-10 pairs (t, t_prev):", [tuple(int(v) for v in p) for p in make_sampler(schedule, "ddim", 10).pairs()])

# %% [markdown]
# ## 3. One DDIM step
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
# One step by hand, from pure noise at the grid's first timestep to the next one of DDIM-10 (the sampler clips
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
# From pure noise the first $\hat x_0$ is a blurry average of digits: at a signal of under 1% the network
# can only guess. The new $x_{t_{prev}}$ still looks like pure noise: at its signal level (the printed
# $\sqrt{\bar\alpha}$) the trace of that guess is too faint to see. The remaining steps sharpen it. The whole loop is one `lax.scan` under `jit`: one compilation, no
# Python between steps.
#
# ## 4. Steps against quality and time
#
# Same noise seed for every row, so differences come from the sampler alone.

# %%
n = 8 if tutorial.quick() else 40
key = jax.random.key(5)
settings = [("ddim", s) for s in ((10, 20) if tutorial.quick() else (10, 20, 50, 100, 200)) if s <= MAX_STEPS] + [("ddpm", T)]
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
# Time grows about linearly with the number of network calls: from 20 calls on, every row takes
# about the same time per call (the last column); the 10-call row pays more per call, since whatever
# a sampling run costs besides its network calls is shared by only ten of them. In the grid, DDIM-10 already draws the same digits as DDIM-200, a little
# rougher in places; by eye, more steps change little.
# The DDIM rows share their noise and, with $\eta = 0$, are deterministic, so they refine the *same*
# digits; DDPM adds fresh noise at each of its 1,000 steps, so from the same start it draws different
# digits, at ten times the cost of DDIM-100. Whether those are *better* digits is a question for
# section 6.
#
# ## 5. Eta: from deterministic DDIM to stochastic DDPM

# %%
etas = (0.0, 0.25, 0.5, 0.75, 1.0)
steps = min(50, MAX_STEPS)
fig = tutorial.plot_image_rows({f"DDIM-{steps}, eta = {eta}": sample(ema_model, schedule, key, ncols, sampler="ddim", steps=steps,
                                                             eta=eta, prediction=cfg.prediction) for eta in etas})
tutorial.show(fig, "eta_sweep")

# %% [markdown]
# At $\eta = 0$ the map from noise to digit is deterministic. As $\eta$ grows, each step injects
# fresh noise, so the digits drift away from the $\eta = 0$ ones: by $\eta = 0.5$ most columns draw
# a different digit from the same start. Some strokes come out a little rougher, because each large
# step has to remove part of the noise it just added. Ten digits cannot tell us which row is better.
#
# ## 6. Measuring it: which sampler draws the best digits?
#
# Ten digits per row are enough to see *what* changes, not *how often* a digit comes out
# malformed. So we score a few hundred samples per setting with the independent MNIST classifier
# of notebook 05: the share it classifies with confidence above 0.9 and the Frechet distance in its
# feature space (lower is better; notebook 05 explains both). Every setting starts from the same
# noise, so the comparison is paired.

# %%
evaluator = get_evaluator(quick=tutorial.quick())
n_score = 32 if tutorial.quick() else 300
score_steps = [s for s in ((10, 25) if tutorial.quick() else (25, 50, 100)) if s <= MAX_STEPS]  # quick: a code check
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
      f"(what real digits score at this N)")

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
# - **With $\eta = 0$, more steps barely help**: the confident share stays within a point from 25 to
#   100 steps, and the Frechet distance improves only a little. This is what the grid in section 4
#   suggested.
# - **$\eta = 1$ is better at 25 and 100 steps**: about eight points more confident samples and a
#   clearly lower Frechet distance. At 50 steps $\eta = 1$ is as much more confident but no lower in
#   Frechet distance.
# - **DDPM-1000 scores best of all**: a clearly lower Frechet distance than DDIM-100 with $\eta = 1$
#   (the same sampler on a ten-times shorter subsequence) and a confident share within a few points
#   of it, at ten times the network evaluations.
# - **Real test digits** set the scale at this N: their Frechet distance is far above the 11 they
#   score at N = 1,000 (the distance shrinks with N; notebook 05), so compare these distances only
#   with each other, never with the Results page's.
# - Why fresh noise helps: a deterministic sampler carries every early mistake of an imperfect model
#   through to the end, along one path; injecting noise and removing it again lets later steps,
#   where the model is more accurate, correct those mistakes. The better the model, the smaller the
#   gain (DDIM's authors found $\eta = 0$ best for fully trained models at few steps).
#
# This is one reason the `cpu` preset samples stochastically, a measured choice for a model trained
# for 20 minutes, not a rule; notebook 07 goes further, with a guide and a faster solver.
#
# ## 7. EMA weights against raw weights

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
# ## 8. The reverse trajectory
#
# What the sampler actually does: $x_t$ after each step (top rows) and, at the same steps, the
# model's current guess of the clean image $\hat x_0$ (bottom rows).

# %%
steps_traj = min(100, MAX_STEPS)
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
# four rows show their final digit by $t = 777$, the last by $t = 666$), and spends the later steps
# on stroke width and detail. The same process as an animation:

# %%
gif = save_trajectory_gif(xs, tutorial.tutorial_run_dir(PRESET) / "trajectory.gif", ncols=4, frames=40)
tutorial.show_gif(gif, alt="reverse process animation")

# %% [markdown]
# ## 9. Interpolating between two noise seeds
#
# DDIM with $\eta = 0$ is a deterministic function from noise to images, so we can walk between two
# starting points and watch one digit turn into another. The walk must be spherical (`slerp`): a
# straight line between two Gaussian draws passes through points with too little noise (the
# midpoint has about 71% of the norm), which the model has never seen at $t = T$.

# %%
# Spherical linear interpolation (Shoemake 1985, https://doi.org/10.1145/325165.325242).
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
# first seed's 5 into the second's 1, through a 6-like shape. Along the straight line (bottom) the
# middle frames start from noise with only about 70% of the expected norm, which the model has never
# seen. With this model the two rows happen to look alike: the same 5, the same 6-like shape, then
# thin 1s. Slerp is the correct path by
# construction; this model is simply not very sensitive to the difference for these two seeds.
#
# ## Summary
# - DDPM's reverse step (algorithm 2) subtracts the predicted noise and adds a little fresh noise;
#   it needs all 1,000 steps. DDIM's step (eq. 12) rebuilds $x_{t_{prev}}$ from $\hat x_0$ and
#   $\hat\varepsilon$, so it can jump over timesteps; with $\eta = 1$ on every timestep it is DDPM.
# - DDIM needs far fewer steps than DDPM's 1,000: DDIM-10 is a fast preview.
# - Measure, don't eyeball: for this briefly trained model, $\eta = 1$ gives more confident digits
#   than $\eta = 0$ at every step count scored, and DDPM-1000 scores best, at ten times the cost.
# - Sample from the EMA weights.
# - The model decides the digit early and refines it late; slerp walks between noise seeds.

# %% [markdown]
# ## Exercises
#
# Each takes a minute or less at the `cpu` preset; the solutions are in collapsed cells (click to
# expand).
#
# 1. Score DDIM-25 with $\eta = 0.5$ on section 6's noise. Does it land between $\eta = 0$ and
#    $\eta = 1$?
# 2. Noise four real test digits to $t = T/2$ with `q_sample` and ask the model once for
#    $\hat x_0$. How close is one network call to the clean digit?

# %% jupyter={"source_hidden": true}
# Solution 1: the same samples' noise as section 6, eta = 0.5; each score compared with eta = 0 and 1.
# Halfway in eta need not be halfway in score: here the confident share lands between the two, the
# FD above both (one draw of 300 samples; section 6 gives the size of such differences).
x = np.asarray(sample(ema_model, schedule, jax.random.key(21), n_score, steps=score_steps[0], eta=0.5,
                      prediction=cfg.prediction))
q = evaluator.evaluate(x)
for name, key_ in (("FD", "frechet_distance"), ("confident share", "confident_share")):
    ends = sorted((scores[(score_steps[0], 0.0)][key_], scores[(score_steps[0], 1.0)][key_]))
    where = "between them" if ends[0] <= q[key_] <= ends[1] else ("below both" if q[key_] < ends[0] else "above both")
    print(f"DDIM-{score_steps[0]} {name}: eta = 0.5 gives {q[key_]:.3f}, {where} "
          f"(eta = 0: {scores[(score_steps[0], 0.0)][key_]:.3f}, eta = 1: {scores[(score_steps[0], 1.0)][key_]:.3f})")

# %% jupyter={"source_hidden": true}
# Solution 2: one call at t = T/2 already recovers each digit's shape, blurred.
x0_real = data.to_model_range(jnp.asarray(test_images[:4]))
t_half = jnp.full((4,), T // 2)
x_half = schedule.q_sample(x0_real, t_half, jax.random.normal(jax.random.key(9), x0_real.shape))
x0_guess = jnp.clip(to_x0_and_eps(cfg.prediction, ema_model(x_half, t_half, None), x_half, schedule, t_half)[0], -1, 1)
print(f"mean absolute pixel error of x0_hat at t = {T // 2}: {float(jnp.mean(jnp.abs(x0_guess - x0_real))):.3f} "
      f"(pixels in [-1, 1]; the noisy input's: {float(jnp.mean(jnp.abs(x_half - x0_real))):.3f})")
fig = tutorial.plot_image_rows({"real test digits": x0_real, f"noised to t = {T // 2}": x_half,
                                "x0_hat from one network call": x0_guess}, ncols=4, size=0.9)
tutorial.show(fig, "exercise_one_call_x0")
