# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Flow matching: the same digits along a straight path
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), commit 2249510; the notebook took 45 min 49 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# Since 2023 the usual recipe for the job this collection does is **flow matching**
# ([Lipman et al. 2023](https://arxiv.org/abs/2210.02747); rectified flow,
# [Liu et al. 2023](https://arxiv.org/abs/2209.03003)); Stable Diffusion 3
# ([Esser et al. 2024](https://arxiv.org/abs/2403.03206)) trains with it. It keeps everything we built:
# the data, the UNet, the optimiser, the EMA, the autoguidance guide. Two things change:
#
# - **the path from data to noise** is a straight line, $x_t = (1 - t)\,x_0 + t\,\varepsilon$ with
#   $t \in [0, 1]$ ($t = 0$ is the data, $t = 1$ pure noise), and the network learns its **velocity**
#   $\mathrm{d}x_t/\mathrm{d}t = \varepsilon - x_0$;
# - **sampling** solves the ordinary differential equation $\mathrm{d}x/\mathrm{d}t = v_\theta(x, t)$
#   from noise (near $t = 1$) to $t = 0$, with Euler's method or Heun's
#   ([Karras et al. 2022](https://arxiv.org/abs/2206.00364), algorithm 1).
#
# We train it at the same budget as notebook 04's DDPM run (the same steps of the same batch on the
# same network) and compare the two at equal training compute: sample quality against the number of
# network evaluations a sample costs.

# %%
import inspect
import json

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

import helpers  # noqa: F401
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers import data
from helpers.config import get_config
from helpers.losses import flow_matching_pair, flow_times
from helpers.metrics import get_evaluator
from helpers.plotting import image_grid, plot_samples, plot_training_curve
from helpers.runs import autoguidance_of, draw_samples
from helpers.sampling import FLOW_SAMPLERS, flow_step, make_sampler, network_evaluations
from helpers.training import noise_schedule, train_step

PRESET = tutorial.setup("08_flow_matching")

# %% [markdown]
# ## 1. Two paths from a digit to noise
#
# DDPM's forward process (notebook 02) is $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$:
# the signal's coefficient $\alpha$ and the noise's $\sigma$ keep $\alpha^2 + \sigma^2 = 1$, a quarter
# circle. Flow matching takes $\alpha = 1 - t$ and $\sigma = t$, a straight line. At equal
# signal-to-noise ratio $(\alpha/\sigma)^2$ the two give the same image up to a scale
# $\sqrt{\alpha^2 + \sigma^2}$, so the network sees the same kinds of noisy digits; what differs is
# how fast the path moves through them and which direction the network is taught to point.

# %%
ddpm_cfg = get_config(PRESET)
schedule = noise_schedule(ddpm_cfg)
u = np.linspace(0, 1, 201)  # fraction of the way from data to noise
ab = np.asarray(schedule.alpha_bars)[np.round(u * (ddpm_cfg.num_timesteps - 1)).astype(int)]
images, labels = data.load_split("mnist", "train", limit=1)
x0 = data.to_model_range(jnp.asarray(images))
eps = jax.random.normal(jax.random.key(0), x0.shape)
shown = np.linspace(0, 1, 8)
flow_row = [flow_matching_pair(x0, eps, jnp.array([t]))[0][0] for t in shown]
ddpm_row = [schedule.q_sample(x0, jnp.array([round(t * (ddpm_cfg.num_timesteps - 1))]), eps)[0] for t in shown]

fig, (ax, ax_images) = plt.subplots(1, 2, figsize=(12, 3.9), gridspec_kw={"width_ratios": [1, 2.2]})
ax.plot(np.sqrt(ab), np.sqrt(1 - ab), label=f"DDPM ({ddpm_cfg.schedule} schedule)")
ax.plot(1 - u, u, label="flow matching")
ax.set(xlabel=r"signal coefficient $\alpha$", ylabel=r"noise coefficient $\sigma$", aspect="equal",
       title=r"$x_t = \alpha\,x_0 + \sigma\,\varepsilon$ from data (1, 0) to noise (0, 1)")
ax.legend()
ax = ax_images
grid = np.concatenate([np.stack(flow_row), np.stack(ddpm_row)])
ax.imshow(image_grid(grid, 8), cmap="gray", vmin=0, vmax=1)
ax.set_title("one digit at t = 0, 1/7, ..., 1: flow matching (top), DDPM (bottom)", fontsize=9)
ax.axis("off")
fig.tight_layout()
tutorial.show(fig, "two_paths")

# %% [markdown]
# Left: DDPM's coefficients follow a quarter circle, flow matching's a straight line between the same
# end points. Right: the same digit
# and the same noise along each path at evenly spaced fractions of the way. The two rows look alike:
# at equal fractions of the way both paths show about the same mix of digit and noise, and the digit
# is gone in both by the last two frames.

# %% [markdown]
# ## 2. The objective and the train step
#
# The flow-matching loss is $\mathbb{E}_{t, x_0, \varepsilon}\,\lVert v_\theta(x_t, t) - (\varepsilon - x_0)\rVert^2$.
# Its minimiser is the average velocity of all straight lines that pass through $x_t$ at time $t$,
# and that field carries noise to data (Lipman et al. 2023, theorems 1 and 2). Which $t$ are drawn matters:
# Esser et al. 2024 (sec. 3.1) found that a **logit-normal** $t = \mathrm{sigmoid}(n)$, $n \sim N(0, 1)$,
# which favours the middle of the path, trains better than uniform $t$; it is our default
# (`flow_times="logit_normal"`). The network is the same UNet: its sinusoidal time embedding (notebook
# 03) takes any real number, and we give it $1000\,t$ so that it sees the range of DDPM's timesteps.

# %%
print(inspect.getsource(flow_times))
print(inspect.getsource(flow_matching_pair))
source = inspect.getsource(train_step).splitlines()
print("\n".join(source[source.index(next(s for s in source if "t_key, noise_key" in s)):][:11]))

# %% [markdown]
# That branch is the whole difference from notebook 04's train step: the time is drawn from
# $[0, 1]$ instead of $\{0, \dots, T-1\}$, the noisy image is on the straight path, the target is the
# velocity and every example weighs the same (the time distribution does the weighting that min-SNR
# does for DDPM). The loss, the optimiser step and the EMA update are shared. The times drawn:

# %%
fig, ax = plt.subplots(figsize=(7, 3))
for kind in ("uniform", "logit_normal"):
    ax.hist(np.asarray(flow_times(jax.random.key(1), 100_000, kind)), bins=50, density=True, alpha=0.6, label=kind)
ax.set(xlabel="t", ylabel="density", title="flow-matching times drawn in training")
ax.legend()
tutorial.show(fig, "flow_times")

# %% [markdown]
# The logit-normal density peaks at $t = 0.5$ and spends little of the training near the two ends.
# Esser et al. argue that the middle is where the velocity is hardest to predict: near $t = 1$ the
# best prediction is close to $x_t$ minus the mean digit, near $t = 0$ close to $-x_t$.
#
# ## 3. Training at notebook 04's budget
#
# The run uses the preset of notebook 04 with the objective changed and 25 sampling steps. The objective
# brings its own settings (`helpers.config.FLOW_SETTINGS`, used for every field not given): the velocity
# target `prediction="v"`, uniform weights (no min-SNR), and Heun's sampler for the samples drawn at the
# end. Like notebook 04's run it is saved under `runs/` and reused when it is there.

# %%
FLOW = dict(objective="flow", sample_steps=25)  # with FLOW_SETTINGS: v, uniform weights, Heun
flow_cfg, flow_state, flow_summary = tutorial.ensure_run(tutorial.runs_dir() / f"tutorial-flow-{PRESET}",
                                                         get_config(PRESET, **FLOW))
ddpm_cfg, ddpm_state, ddpm_summary = tutorial.trained_run(PRESET)
for name, s in (("flow matching", flow_summary), ("DDPM (notebook 04)", ddpm_summary)):
    print(f"{name:20s}: {s['steps']:,} steps of batch {flow_cfg.batch_size}, {s['parameters']:,} parameters, "
          f"final loss {s['final_loss']:.4f}")

# %%
history = json.loads((tutorial.runs_dir() / f"tutorial-flow-{PRESET}" / "history.json").read_text())
fig = plot_training_curve(history, title="flow matching: loss and learning rate")
tutorial.show(fig, "training_curve")

# %% [markdown]
# The loss falls fast in the first few hundred steps and then slowly; it stays noisy because every
# batch draws new times and the velocity's error depends strongly on $t$. Its value is not comparable
# with the DDPM run's: the two regress different targets.

# %%
guidance = autoguidance_of(flow_cfg, flow_state)
x = draw_samples(flow_cfg, flow_state, jax.random.key(flow_cfg.seed + 1), 100, autoguidance=guidance)
steps = flow_cfg.sample_steps
nfe = network_evaluations(make_sampler(noise_schedule(flow_cfg), "heun", steps), guided=guidance is not None)
fig = plot_samples(x, title=f"flow matching, Heun with {steps} steps ({nfe} network evaluations), autoguidance")
tutorial.show(fig, "samples")

# %% [markdown]
# Most of these samples are clean digits, and every class appears; a few are malformed (a blotch in
# the bottom row, a broken 5 at the right end of the fourth row).
#
# ## 4. Sampling: Euler and Heun
#
# Euler's method takes the velocity at the start of a step and walks along it. Heun's takes a trial
# Euler step, evaluates the velocity again at its end, and walks along the average of the two slopes:
# a second-order method, exact when the velocity changes linearly along a step. Its last step, to $t = 0$,
# is an Euler step (Karras et al. 2022 do the same), so $N$ Heun steps cost $2N - 1$ network
# evaluations. Both run as one `lax.scan` over an explicit grid of $(t, t_{next})$ pairs, with
# autoguidance wrapped around the network as for DDPM.

# %%
print(inspect.getsource(flow_step))
print("Heun, 5 steps, (t, t_next):", make_sampler(noise_schedule(flow_cfg), "heun", 5).pairs().tolist())

# %% [markdown]
# A few samples on their way, with Heun's 25 steps: each row is one time, from the noise (top) to
# the digit (bottom).

# %%
noise = jax.random.normal(jax.random.key(7), (8, 32, 32, 1))
x, (xs, x0s, pairs) = draw_samples(flow_cfg, flow_state, jax.random.key(7), 8, autoguidance=guidance,
                                   x_T=noise, return_trajectory=True)
rows = {f"t = {pairs[0][0]:.2f} (noise)": noise}
shown = [k * (len(xs) - 1) // 24 for k in (4, 9, 14, 19, 22, 24)]  # steps 5, 10, 15, 20, 23, 25 of 25
rows.update({f"t = {pairs[k][1]:.2f}": xs[k] for k in shown})
fig = tutorial.plot_image_rows(rows, title=f"flow matching: x_t along Heun's {len(xs)} steps")
tutorial.show(fig, "trajectories")

# %% [markdown]
# The noise begins to show a digit at $t = 0.6$; by $t = 0.4$ every digit's identity is settled, and
# the later steps only sharpen the strokes and remove the remaining noise.
#
# ### Why fewer steps can suffice
#
# If every sample's trajectory were a straight line, one Euler step would land exactly on it. The
# learned trajectories are not straight (the velocity field averages many straight lines through each
# point), but we can measure how close they are: the straight distance from the start to the end of a
# trajectory divided by the length of the path walked (1 = straight). We compare the flow model's
# Euler trajectories with the DDPM model's deterministic DDIM trajectories (each on 100 steps, 32
# samples, no guidance).

# %%
def straightness(xs, x_start):
    """|x_end - x_start| / path length, per sample, from a trajectory xs of shape (steps, N, ...)."""
    path = np.concatenate([np.asarray(x_start)[None], np.asarray(xs)])
    flat = path.reshape(len(path), len(path[0]), -1)
    length = np.linalg.norm(np.diff(flat, axis=0), axis=-1).sum(axis=0)
    return np.linalg.norm(flat[-1] - flat[0], axis=-1) / length


x_T = jax.random.normal(jax.random.key(11), (32, 32, 32, 1))
straight = {}
for name, run_cfg, state, sampler in (("flow matching, Euler", flow_cfg, flow_state, "euler"),
                                      ("DDPM, DDIM (eta = 0)", ddpm_cfg, ddpm_state, "ddim")):
    _, (xs, _, _) = draw_samples(run_cfg, state, jax.random.key(0), 32, autoguidance=None, sampler=sampler,
                                 steps=100, eta=0.0, x_T=x_T, return_trajectory=True)
    straight[name] = straightness(xs, x_T)
    print(f"{name:22s}: straightness {straight[name].mean():.3f} (range {straight[name].min():.3f}-"
          f"{straight[name].max():.3f})")

# %% [markdown]
# The flow model's trajectories are close to straight lines; the DDPM model's DDIM trajectories bend
# more (their averages are printed above). Fewer steps, on the same noise: Euler with 1, 2, 4 and 8
# steps for the flow model, DDIM with as many steps for the DDPM model (each with its run's
# autoguidance, so twice as many network evaluations).

# %%
few = {}
for steps in (1, 2, 4, 8):
    for name, run_cfg, state, sampler in (("flow, Euler", flow_cfg, flow_state, "euler"),
                                          ("DDPM, DDIM", ddpm_cfg, ddpm_state, "ddim")):
        few[f"{name}, {steps} step{'s' if steps > 1 else ''}"] = draw_samples(
            run_cfg, state, jax.random.key(0), 12, autoguidance=autoguidance_of(run_cfg, state),
            sampler=sampler, steps=steps, eta=0.0, x_T=x_T[:12])
fig = tutorial.plot_image_rows(few, title="the same 12 noise images, few steps")
tutorial.show(fig, "few_steps")

# %% [markdown]
# With one step both models return a blurred average digit: one step can only follow the velocity
# (or the noise estimate) taken at pure noise. With two steps the flow model already draws digits
# while DDIM still returns blurs. Both samplers visit the same noise levels: the flow sampler's times
# are those of the time grid of notebook 06, each flow time $t$ at the signal-to-noise ratio
# $((1 - t) / t)^2$ of DDIM's timestep, so the two models are compared, not two grids. From four steps
# on both draw digits, and the same noise often becomes the same digit in both models.
#
# ## 5. Flow matching against DDPM at equal training compute
#
# Both runs trained the same network for the same steps on the same batches, so they cost the same.
# We score each with the measures of notebook 05 (Fréchet distance in the evaluation classifier's
# feature space, [Heusel et al. 2017](https://arxiv.org/abs/1706.08500); the share of samples the
# classifier is confident about; the smallest and largest class share) on $N = 1000$ samples, for
# three sampling seeds, against the network evaluations per sample (NFE, the table's column). Every
# sampler uses its run's autoguidance (notebook 07; the preset's `autoguidance_scale`, 2), which
# doubles the network evaluations per step. DDPM is sampled with deterministic DDIM and
# with DPM-Solver++(2M) SDE, the preset's sampler.

# %%
N, SEEDS = (32, (0, 1)) if tutorial.quick() else (1000, (0, 1, 2))
SWEEP = {"euler": (2, 5, 10, 25, 50), "heun": (2, 3, 5, 13, 25), "ddim": (2, 5, 10, 25, 50),
         "dpmpp_2m_sde": (2, 5, 10, 25, 50)}
if tutorial.quick():
    SWEEP = {k: v[:2] for k, v in SWEEP.items()}
evaluator = get_evaluator(quick=tutorial.quick())
results = []
jobs = [(sampler, steps, seed) for sampler, all_steps in SWEEP.items() for steps in all_steps for seed in SEEDS]
for sampler, steps, seed in tqdm(jobs, desc="sampling and scoring", unit="draw"):
    run_cfg, state = (flow_cfg, flow_state) if sampler in FLOW_SAMPLERS else (ddpm_cfg, ddpm_state)
    ag = autoguidance_of(run_cfg, state)
    samples = draw_samples(run_cfg, state, jax.random.key(seed), N, autoguidance=ag, sampler=sampler,
                           steps=steps, eta=0.0)
    f = evaluator.evaluate(samples)
    nfe = network_evaluations(make_sampler(noise_schedule(run_cfg), sampler, steps), guided=ag is not None)
    results.append(dict(sampler=sampler, steps=steps, nfe=nfe, seed=seed, fd=f["frechet_distance"],
                        confident=f["confident_share"], min_share=f["min_class_share"],
                        max_share=f["max_class_share"]))


def summarise(results):
    """Mean, min and max over the seeds of each (sampler, steps)."""
    table = {}
    for r in results:
        table.setdefault((r["sampler"], r["steps"], r["nfe"]), []).append(r)
    return {key: {m: (np.mean([r[m] for r in rs]), np.min([r[m] for r in rs]), np.max([r[m] for r in rs]))
                  for m in ("fd", "confident", "min_share", "max_share")} for key, rs in table.items()}


summary_table = summarise(results)
print(f"{'sampler':13s} {'steps':>5s} {'NFE':>4s}  {'FD mean (range)':>20s}  {'confident':>9s}  class shares")
for (sampler, steps, nfe), m in summary_table.items():
    print(f"{sampler:13s} {steps:5d} {nfe:4d}  {m['fd'][0]:7.1f} ({m['fd'][1]:5.1f}-{m['fd'][2]:5.1f})  "
          f"{m['confident'][0]:9.1%}  {m['min_share'][1]:.1%}-{m['max_share'][2]:.1%}")

# %%
LABELS = {"euler": "flow, Euler", "heun": "flow, Heun", "ddim": "DDPM, DDIM", "dpmpp_2m_sde": "DDPM, DPM-Solver++(2M) SDE"}
fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
for sampler in SWEEP:
    keys = [k for k in summary_table if k[0] == sampler]
    nfe = [k[2] for k in keys]
    for ax, metric in zip(axes, ("fd", "confident", "min_share")):
        mean, low, high = (np.array([summary_table[k][metric][i] for k in keys]) for i in range(3))
        ax.errorbar(nfe, mean, yerr=[mean - low, high - mean], marker="o", capsize=3, label=LABELS[sampler],
                    linestyle="--" if sampler in ("ddim", "dpmpp_2m_sde") else "-")
for ax, title in zip(axes, ("Fréchet distance (lower is better)", "share of confident samples",
                            "smallest class share (uniform: 10%)")):
    ax.set(xscale="log", xlabel="network evaluations per sample", title=title)
    ax.grid(True, alpha=0.3)
axes[0].set_yscale("log")
axes[0].legend(fontsize=8)
fig.suptitle(f"equal training compute ({flow_summary['steps']:,} steps each), N = {N}, mean and range over "
             f"{len(SEEDS)} sampling seeds", fontsize=10)
fig.tight_layout()
tutorial.show(fig, "equal_compute")

# %% [markdown]
# Left, the Fréchet distance: the flow samplers and DDIM improve steeply at first and level off by
# about 50 network evaluations; DPM-Solver++(2M) SDE starts far behind and is still improving at
# 100. With 4 evaluations flow matching's Euler is far ahead of both DDPM samplers, and Heun with 6
# is ahead of them too; at 10 Heun, Euler and DDIM are level. DPM-Solver++(2M) SDE, the preset's sampler, is far behind the others at 10 and
# 20 evaluations; at 100 it is the best.
# Middle and right: the few-step samplers that score badly draw few confident digits and leave whole
# classes nearly empty (the smallest class share near 0). The best score of each objective within a
# budget of evaluations:

# %%
def best(samplers, max_nfe):
    """The (sampler, steps, NFE) with the lowest mean FD among `samplers` at most `max_nfe` evaluations."""
    keys = [k for k in summary_table if k[0] in samplers and k[2] <= max_nfe]
    key = min(keys, key=lambda k: summary_table[k]["fd"][0])
    return key, summary_table[key]["fd"][0]


for budget in (10, 20, 100):
    (fs, fsteps, fnfe), ffd = best(FLOW_SAMPLERS, budget)
    (ds, dsteps, dnfe), dfd = best(("ddim", "dpmpp_2m_sde"), budget)
    print(f"at most {budget:3d} evaluations: flow {ffd:6.1f} ({fs} {fsteps} steps, {fnfe}), "
          f"DDPM {dfd:6.1f} ({ds} {dsteps} steps, {dnfe}); ratio DDPM / flow = {dfd / ffd:.2f}")

# %% [markdown]
# At this budget neither objective wins everywhere. With about 20 network evaluations flow matching
# (Heun, 5 steps) scores a lower Fréchet distance than DDPM's best sampler there (DDIM), by the ratio
# printed above; the seed ranges in the table overlap, so it is a lead, not a rout. With 10 evaluations
# the two are level and both poor. With 100, DDPM sampled with DPM-Solver++(2M) SDE leads (here too
# the seed ranges overlap). Heun's second order pays for itself: 5 Heun steps (18 evaluations) score about what 25 Euler
# steps (50) do.
#
# ## Summary
#
# - Flow matching trains the same UNet on the straight path $x_t = (1 - t)\,x_0 + t\,\varepsilon$ to
#   predict the velocity $\varepsilon - x_0$; the train step differs from DDPM's in one branch.
# - Sampling solves $\mathrm{d}x/\mathrm{d}t = v_\theta(x, t)$ from noise to data; Heun's method needs far
#   fewer steps than Euler's for the same quality.
# - Its trajectories are straighter than DDIM's, and with two steps it draws digits where DDIM does
#   not yet.
# - At equal training compute on this CPU budget, flow matching leads at about 20 network evaluations
#   and DDPM with DPM-Solver++(2M) SDE leads at 100: what you pay for sampling decides which to train.

# %% [markdown]
# ## Exercises
#
# 1. What share of the times drawn in training falls in $[0.4, 0.6]$ with uniform and with
#    logit-normal $t$? And below $0.1$?
# 2. How many network evaluations does Heun with 10 steps cost per sample, without and with
#    autoguidance? Check with `network_evaluations`.
# 3. Draw 1,000 samples from the flow model with Heun's 25 steps without autoguidance
#    (`autoguidance=None`) and score them: what does the guide buy?

# %% jupyter={"source_hidden": true}
# Solution 1: count the drawn times in each interval.
for kind in ("uniform", "logit_normal"):
    t = np.asarray(flow_times(jax.random.key(1), 100_000, kind))
    print(f"{kind:12s}: {np.mean((t >= 0.4) & (t <= 0.6)):.1%} in [0.4, 0.6], {np.mean(t < 0.1):.1%} below 0.1")

# %% [markdown] jupyter={"source_hidden": true}
# Logit-normal times put more of the training in the middle of the path and much less near the data
# than uniform times do.

# %% jupyter={"source_hidden": true}
# Solution 2: Heun's last step is an Euler step; autoguidance runs the guide at every evaluation.
heun10 = make_sampler(noise_schedule(flow_cfg), "heun", 10)
print(f"Heun, 10 steps: {network_evaluations(heun10)} evaluations, "
      f"{network_evaluations(heun10, guided=True)} with autoguidance")

# %% [markdown] jupyter={"source_hidden": true}
# 19 and 38: two per step except the last, and twice that with the guide.

# %% jupyter={"source_hidden": true}
# Solution 3: the same seed and sampler with and without the guide.
for ag in (guidance, None):
    samples = draw_samples(flow_cfg, flow_state, jax.random.key(0), N, autoguidance=ag, sampler="heun", steps=25)
    f = evaluator.evaluate(samples)
    print(f"{'with' if ag else 'without'} autoguidance: FD {f['frechet_distance']:.1f}, "
          f"confident {f['confident_share']:.1%}")

# %% [markdown] jupyter={"source_hidden": true}
# Autoguidance helps the flow model too, as notebook 07 found for DDPM: without the guide the
# Fréchet distance is more than three times as large and fewer samples are confident digits.
