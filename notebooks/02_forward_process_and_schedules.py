# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The forward process and noise schedules
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), commit 47423ea; the notebook took 11 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# A diffusion model is trained on one simple task: given a digit that has been buried in a known
# amount of Gaussian noise, say what the noise was. The **forward process** is the recipe for
# burying it; the **noise schedule** decides how fast the digit disappears. This notebook looks at
# both, and at why the reference tutorial (Artifex's ["Training a Diffusion Model on MNIST"](https://docs.avitai.bio/artifex/examples/basic/diffusion-mnist),
# the JAX tutorial this collection re-creates) and we use the cosine schedule.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import helpers  # noqa: F401
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers import data
from helpers.schedules import NoiseSchedule

PRESET = tutorial.setup("02_forward_process_and_schedules")

# %% [markdown]
# ## 1. q(x_t | x_0) in one line
#
# With betas $\beta_1, \dots, \beta_T$, $\alpha_t = 1 - \beta_t$ and
# $\bar\alpha_t = \prod_{s \le t} \alpha_s$, adding noise *t* times in a row collapses into one
# Gaussian ([Ho et al. 2020](https://arxiv.org/abs/2006.11239), eq. 4):
#
# $$x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \varepsilon, \qquad \varepsilon \sim \mathcal N(0, I).$$
#
# So we never simulate the chain step by step: any $x_t$ is one multiply-add away from $x_0$, which
# is what makes training cheap. `NoiseSchedule.q_sample` is exactly this line.

# %%
T = 1000
linear = NoiseSchedule.linear(T, beta_start=1e-4, beta_end=0.02)
cosine = NoiseSchedule.cosine(T)
for s in (linear, cosine):
    ab = np.asarray(s.alpha_bars)
    print(f"{s.kind:6s}: alpha_bar[0] = {ab[0]:.5f}, alpha_bar[T/2] = {ab[T // 2]:.4f}, "
          f"alpha_bar[T-1] = {ab[-1]:.2e}")

# %% [markdown]
# (The code numbers timesteps 0 to $T-1$: the paper's $t = 1, \dots, T$ is our $t = 0, \dots, T-1$.)
# Both end with almost no signal left ($\bar\alpha_{T-1} \approx 0$): the last $x_t$ is pure noise.
# The cosine schedule's betas are clipped at 0.999 ([Nichol & Dhariwal
# 2021](https://arxiv.org/abs/2102.09672)), which is why its last $\bar\alpha$ is tiny but not zero; its
# last few timesteps are far noisier than the ones before, so sampling will start a little earlier, where
# the signal is just under 1% of the noise (notebook 06).
#
# ## 2. Two schedules side by side
#
# The **linear** schedule (Ho et al. 2020) spaces betas evenly from 1e-4 to 0.02. The **cosine**
# schedule (Nichol & Dhariwal 2021, eq. 17) instead defines $\bar\alpha_t$ directly as a squared
# cosine of $t/T$. The signal-to-noise ratio $\mathrm{SNR}(t) = \bar\alpha_t / (1 - \bar\alpha_t)$
# is the clearest way to compare them; it spans many orders of magnitude, so we plot it on a log
# scale.

# %%
t = np.arange(T)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for s, color in ((linear, "tab:red"), (cosine, "tab:blue")):
    axes[0].plot(t, np.asarray(s.alpha_bars), color=color, label=s.kind)
    axes[1].plot(t, np.asarray(s.snr()), color=color, label=s.kind)
axes[0].set_title(r"signal kept: $\bar\alpha_t$")
axes[1].set_title(r"SNR$(t) = \bar\alpha_t / (1 - \bar\alpha_t)$ (log scale)")
axes[1].set_yscale("log")
for ax in axes:
    ax.set_xlabel("timestep t")
    ax.grid(True, alpha=0.3)
    ax.legend()
fig.tight_layout()
tutorial.show(fig, "alpha_bar_and_snr")
for s in (linear, cosine):
    snr = np.asarray(s.snr())
    print(f"{s.kind:7s} SNR below 1e-2 from t = {int(np.argmax(snr < 1e-2))}, below 1e-3 from t = "
          f"{int(np.argmax(snr < 1e-3)) if (snr < 1e-3).any() else 'never'} (of {T})")

# %% [markdown]
# On the left, the linear schedule (red) has destroyed most of the signal by t = 300, while the
# cosine schedule (blue) falls almost linearly through the middle of the range. On the right, the
# linear schedule's SNR is below 1e-2 for about the last third of the process (from t = 674, as
# printed above): hundreds of timesteps that all look like pure noise, where the model learns little.
# The cosine schedule crosses 1e-2 only in its last 64 steps. The cosine SNR
# moves through the informative range (roughly 1e-2 to 1e2) evenly.

# %% [markdown]
# ## 3. Watching a digit disappear
#
# Here is one digit noised to several timesteps with the *same* noise $\varepsilon$, under each
# schedule.

# %%
def plot_forward_strip(x0, schedule, timesteps, key, title: str | None = None):
    """One image noised to each timestep in `timesteps` with q(x_t | x_0) (the same noise for all t)."""
    x0 = jnp.asarray(x0)[None] if jnp.ndim(x0) == 3 else jnp.asarray(x0[:1])
    noise = jax.random.normal(key, x0.shape)
    ts = jnp.asarray(timesteps)
    xt = jax.vmap(lambda t: schedule.q_sample(x0, t[None], noise)[0])(ts)
    fig, axes = plt.subplots(1, len(timesteps), figsize=(1.3 * len(timesteps), 1.7))
    for ax, img, t in zip(np.atleast_1d(axes), np.asarray(xt), timesteps):
        ax.imshow(data.from_model_range(img)[..., 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"t={int(t)}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title or f"forward process, {schedule.kind} schedule", fontsize=10)
    fig.tight_layout()
    return fig


images, _ = data.load_split("mnist", "test", limit=16)
x0 = data.to_model_range(jnp.asarray(images[:1]))
timesteps = [0, 50, 100, 200, 300, 400, 500, 650, 800, 999]
key = jax.random.key(1)
for s in (linear, cosine):
    fig = plot_forward_strip(x0, s, timesteps, key, title=f"q(x_t | x_0), {s.kind} schedule")
    tutorial.show(fig, f"forward_strip_{s.kind}")

# %% [markdown]
# Under the linear schedule the digit is hard to make out by t = 300 and gone by t = 500. Under
# the cosine schedule it is still visible at t = 500 and fades out gradually until about t = 800.
# This is what "cosine adds noise more gently" means: fewer timesteps are wasted on images that
# are already noise, and more of them sit at the noise levels where the model must decide what
# digit it is drawing.

# %% [markdown]
# ## 4. Checking the closed form
#
# A quick sanity check that the closed form agrees with running the chain one step at a time,
# $x_t = \sqrt{\alpha_t}\, x_{t-1} + \sqrt{\beta_t}\, \varepsilon_t$: the two are different random
# variables, so we compare their statistics over many draws.

# %%
t_check = 300
n_draws = 256 if tutorial.quick() else 2048
keys = jax.random.split(jax.random.key(2), t_check + 2)
x = jnp.broadcast_to(x0, (n_draws, *x0.shape[1:]))
for i in range(t_check + 1):  # steps 0..t_check of the chain
    x = jnp.sqrt(cosine.alphas[i]) * x + jnp.sqrt(cosine.betas[i]) * jax.random.normal(keys[i], x.shape)
closed = cosine.q_sample(jnp.broadcast_to(x0, x.shape), jnp.full((n_draws,), t_check),
                         jax.random.normal(keys[-1], x.shape))
print(f"t = {t_check}: chain mean {float(x.mean()):+.4f} vs closed form {float(closed.mean()):+.4f}; "
      f"std {float(x.std()):.4f} vs {float(closed.std()):.4f}")
print(f"sqrt(alpha_bar) = {float(jnp.sqrt(cosine.alpha_bars[t_check])):.4f} "
      f"(the factor left on the clean digit)")

# %% [markdown]
# The means and standard deviations agree to sampling noise: the closed form is the chain.
#
# ## Summary
# - Training draws $t$ uniformly and makes $x_t$ in one step with `q_sample`.
# - The cosine schedule keeps the digit recognisable for longer and moves through the informative
#   middle of the log-SNR range (SNR about 1e2 to 1e-2) at a nearly steady pace; it is the default here, as in the reference tutorial.
# - Notebook 09 trains one model per schedule at equal compute and compares their samples.

# %% [markdown]
# ## Exercises
#
# Each runs in seconds; the solutions are in collapsed cells (click to expand).
#
# 1. At which timestep does each schedule's SNR cross 1, where signal and noise are equally strong?
#    What share of the 1,000 timesteps lies on the noisy side of it?
# 2. The `tiny` preset uses $T = 100$. Plot the cosine schedule's $\bar\alpha$ for $T$ = 100 and
#    1,000 against $t / T$: does the shorter schedule remove the signal at the same pace?
# 3. Make section 3's strip for another digit, with the linear schedule, at t = 0, 100, ..., 500.

# %% jupyter={"source_hidden": true}
# Solution 1: the first t where SNR(t) < 1.
for s in (linear, cosine):
    crossing = int(np.argmax(np.asarray(s.snr()) < 1.0))
    print(f"{s.kind:6s}: SNR < 1 from t = {crossing}, {(T - crossing) / T:.0%} of the timesteps on the noisy side")

# %% jupyter={"source_hidden": true}
# Solution 2: the cosine schedule is defined on t / T, so both curves (nearly) coincide.
fig, ax = plt.subplots(figsize=(6, 3))
for steps in (100, 1000):
    s = NoiseSchedule.cosine(steps)
    ax.plot(np.arange(steps) / steps, np.asarray(s.alpha_bars), label=f"T = {steps}")
ax.set(xlabel="t / T", ylabel=r"$\bar\alpha_t$")
ax.legend()
fig.tight_layout()
tutorial.show(fig, "exercise_alpha_bar_t_over_T")

# %% jupyter={"source_hidden": true}
# Solution 3: another test digit, the linear schedule.
fig = plot_forward_strip(data.to_model_range(jnp.asarray(images[1:2])), linear, [0, 100, 200, 300, 400, 500],
                         jax.random.key(3), title="q(x_t | x_0), linear schedule, another digit")
tutorial.show(fig, "exercise_forward_strip")
