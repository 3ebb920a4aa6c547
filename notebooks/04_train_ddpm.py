# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Training a DDPM on MNIST
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (Intel(R) Xeon(R) Processor, 2 cores), 2026-11-27; the notebook took 24 min 01 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# This is the heart of the collection: the complete training run of the reference tutorial, step
# by step, in JAX, Flax NNX and optax. We set up the configuration, data and model, build the
# optimiser (AdamW with warmup + cosine decay and gradient clipping), the loss and the EMA of the
# weights, compile the train step, train with a progress bar, and finally draw digits with DDIM
# from the EMA weights.
#
# The run is saved to `runs/tutorial-<preset>/` with checkpoints; notebooks 05-08 reuse it. On a
# GPU the `paper` preset runs the reference's full 50 epochs; on a laptop CPU the `cpu` preset
# trains a smaller model for at most 20 minutes.

# %%
import json
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import helpers  # noqa: F401  (sets TF/JAX GPU-memory variables first)
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers import data
from helpers.config import PRESETS, get_config
from helpers.losses import per_example_loss
from helpers.plotting import plot_samples, plot_training_curve
from helpers.schedules import NoiseSchedule
from helpers.training import EMA, compiled_train_step, ema_decay_at, make_lr_schedule, make_optimizer
from helpers.unet import count_params, create_unet

PRESET = tutorial.setup("04_train_ddpm")

# %% [markdown]
# ## 1. Configuration
#
# Every hyperparameter lives in one frozen dataclass, `helpers.config.Config`. Three presets:
# `paper` is the reference tutorial (50 epochs of batch 256, UNet 64/128/256, Huber loss, AdamW
# 1e-4); `cpu` is what two CPU cores can train in 20 minutes; `tiny` runs in seconds for tests.
# Any field can be overridden: `get_config("cpu", batch_size=32)` here, `--batch-size 32` on the
# command line.

# %%
cfg = get_config(PRESET)
print(json.dumps({k: v for k, v in json.loads(cfg.to_json()).items() if k != "model"}, indent=None))
print("model:", cfg.model)

# %% [markdown]
# How the `cpu` preset differs from the reference, and why (each choice was measured; README,
# "The cpu preset"):

# %%
paper, cpu = json.loads(PRESETS["paper"].to_json()), json.loads(PRESETS["cpu"].to_json())
for k in paper:
    if k == "model":
        for mk in paper["model"]:
            if paper["model"][mk] != cpu["model"][mk]:
                print(f"  model.{mk:22s} paper {paper['model'][mk]!s:18s} cpu {cpu['model'][mk]}")
    elif paper[k] != cpu[k] and k != "preset":
        print(f"  {k:28s} paper {paper[k]!s:18s} cpu {cpu[k]}")

# %% [markdown]
# ## 2. Data on the device
#
# As in notebook 01: the uint8 training set goes to the device once; the train step gathers each
# batch from an on-device permutation and scales it to [-1, 1] at 32x32.

# %%
images, labels = data.load_split(cfg.dataset, "train", limit=cfg.train_limit)
print(f"{len(images):,} training images; {data.steps_per_epoch(len(images), cfg.batch_size):,} steps per "
      f"epoch at batch {cfg.batch_size}; the preset's plan: {cfg.total_steps(len(images)):,} steps")
if cfg.fit_steps_to_time:
    print(f"fit_steps_to_time: the run times its first steps and sets its number of steps to what fills "
          f"{cfg.time_limit_minutes:g} minutes on this machine")

# %% [markdown]
# ## 3. Model
#
# The UNet of notebook 03, built from the preset's `UNetConfig`.

# %%
model = create_unet(cfg.model, seed=cfg.seed)
print(f"UNet {cfg.model.channels}: {count_params(model):,} parameters")

# %% [markdown]
# ## 4. Learning rate: warmup, then cosine decay
#
# The learning rate rises linearly from 0 to its peak over the warmup (large early updates on a
# freshly initialised network are unstable), then follows half a cosine down to 1% of the peak at
# the last step. `optax.warmup_cosine_decay_schedule` counts the warmup inside `decay_steps`, so
# `decay_steps` is the run's total number of steps. (The reference's comment says warmup "over
# 1000 steps" while its code uses 500; we use 500.)

# %%
def plot_lr_schedule(lr_schedule, total_steps: int, title: str = "Learning rate: warmup + cosine decay"):
    """The learning rate at every step of a run."""
    steps = np.arange(total_steps)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(steps, np.asarray(lr_schedule(steps)), color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return fig


total_steps = cfg.total_steps(len(images))
lr_schedule = make_lr_schedule(cfg.learning_rate, cfg.warmup_steps, total_steps, cfg.end_lr_fraction)
fig = plot_lr_schedule(lr_schedule, total_steps, title=f"{PRESET}: warmup {cfg.warmup_steps} steps, "
                       f"cosine decay to {cfg.end_lr_fraction:.0%} of {cfg.learning_rate:g}")
tutorial.show(fig, "lr_schedule")

# %% [markdown]
# A short ramp, a peak, and a long smooth decay: late in training the small steps let the weights
# settle, which is when samples become sharp.
#
# ## 5. Optimiser: AdamW with gradient clipping
#
# `optax.chain(clip_by_global_norm(1.0), scale_by_adam(), add_decayed_weights(wd), -learning_rate)`,
# which is optax's own `adamw` chain after clipping: clipping caps the size of any single update
# (the occasional batch of nearly-clean images at t near 0 can produce large gradients), AdamW
# adapts the step size per parameter and decays weights separately from the gradient (Loshchilov &
# Hutter 2019). The learning rate is given to each step (`lr_schedule(step)`), not baked into the
# optimiser, so that a run that re-plans its length mid-way compiles nothing new. `nnx.Optimizer`
# keeps the optimiser state next to the model.

# %%
optimizer = make_optimizer(model, cfg.weight_decay, cfg.grad_clip)
moments = sum(x.size for x in jax.tree.leaves(nnx.state(optimizer, nnx.OptState)))
print(f"optax.chain(clip_by_global_norm({cfg.grad_clip}), scale_by_adam(), add_decayed_weights({cfg.weight_decay}), "
      f"-learning_rate)")
print(f"optimiser state: {moments:,} numbers (AdamW keeps two moments per parameter: "
      f"2 x {count_params(model):,}, plus step counters)")

# %% [markdown]
# ## 6. The loss: what the network predicts and how errors count
#
# The network predicts the noise $\varepsilon$ (`prediction="epsilon"`, Ho et al. 2020) and the
# reference measures the error with the **Huber** loss: quadratic for small errors, linear for large
# ones, so a few very wrong pixels do not dominate the gradient. Our `cpu` preset uses plain MSE
# with **min-SNR weighting** (Hang et al. 2023), which down-weights the nearly-clean timesteps
# whose noise is hard to see and easy to over-fit; notebook 06 compares both at equal compute.

# %%
err = jnp.linspace(-3, 3, 121)[:, None, None, None]
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(err[:, 0, 0, 0], per_example_loss("mse", err, jnp.zeros_like(err)), label="MSE (squared error)")
ax.plot(err[:, 0, 0, 0], per_example_loss("huber", err, jnp.zeros_like(err), 1.0), label="Huber, delta = 1")
ax.set_xlabel("prediction error")
ax.set_ylabel("loss")
ax.legend()
ax.grid(True, alpha=0.3)
fig.tight_layout()
tutorial.show(fig, "huber_vs_mse")

# %% [markdown]
# The two agree (up to the factor 1/2) for errors below 1; beyond that, Huber grows linearly.
#
# ## 7. EMA of the weights
#
# Samples come from an exponential moving average of the weights, which smooths out the noise of
# the last optimiser steps. The reference uses decay 0.9999 updated every 10 steps, but its run
# has only ~11.7k steps, i.e. 1,170 EMA updates: $0.9999^{1170} = 0.89$, so **89% of the average
# would still be the random initial weights** and its samples would be noise. We use the standard
# warm-up, $d_n = \min(d, (1 + n) / (10 + n))$, which averages over the recent past at any run
# length:

# %%
n = np.arange(1, 12_000)
fig, ax = plt.subplots(figsize=(7, 3))
for warm in (False, True):
    d = np.broadcast_to(np.asarray(ema_decay_at(0.9999, n, warm)), n.shape)
    init_share = np.cumprod(d)  # weight the average still gives the initial parameters
    ax.plot(n, init_share, label=f"decay 0.9999 {'with' if warm else 'without'} warm-up")
ax.set_xlabel("EMA updates")
ax.set_ylabel("share of initial weights")
ax.set_yscale("log")
ax.legend()
ax.grid(True, alpha=0.3)
fig.tight_layout()
tutorial.show(fig, "ema_warmup")

# %% [markdown]
# Without warm-up (blue) the initial weights still make up most of the average after a thousand
# updates; with warm-up (orange) their share falls below 1% within the first hundred.

# %%
ema = EMA(model, cfg.ema_decay, cfg.ema_every, cfg.ema_warmup)

# %% [markdown]
# ## 8. The train step, compiled
#
# One step of DDPM training (Ho et al. 2020, algorithm 1): draw $t \sim U\{0..T-1\}$ and
# $\varepsilon \sim \mathcal N(0, I)$, make $x_t$ with `q_sample`, predict, take the weighted loss,
# one AdamW update, one EMA update. `helpers.training.train_step` is written the NNX way (the model,
# optimiser and EMA are updated in place). `compiled_train_step` compiles it once with `jax.jit`
# over the modules' pure state (`nnx.split` / `nnx.merge` around the step): `nnx.jit` would walk
# the whole module graph in Python on every call. The first call compiles (seconds), later calls
# only run. `data.get_batch` gathers each batch on the device from the epoch's order.

# %%
schedule = NoiseSchedule.create(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
images_d = jax.device_put(images)
order = data.epoch_order(jax.random.key(0), 0, len(images), cfg.batch_size)
graphdef, state = nnx.split((model, optimizer, ema))
for s in range(3):
    x0, _, mask = data.get_batch(images_d, None, order, s, cfg.batch_size)
    t0 = time.perf_counter()
    state, metrics = compiled_train_step(graphdef, state, schedule, x0, None, mask, jax.random.key(s),
                                         lr_schedule(s), cfg=cfg)
    loss = float(metrics["loss"])
    print(f"step {s}: loss {loss:.4f}, grad norm {float(metrics['grad_norm']):.3f}, "
          f"{time.perf_counter() - t0:.2f} s{' (includes compilation)' if s == 0 else ''}")
nnx.update((model, optimizer, ema), state)

# %% [markdown]
# ## 9. The training loop
#
# `helpers.runs.train_run` runs the same step in a `Trainer`: it dispatches the steps back to back
# without waiting for results (JAX dispatch is asynchronous), reads the losses once per chunk of
# `log_every` steps, shows a progress bar with loss and learning rate, saves orbax checkpoints
# every `checkpoint_every` steps, stops with a clear message on a NaN loss, and writes the run
# folder. If this notebook is stopped, run the cell again: it resumes from the last checkpoint.
# (From a terminal: `python scripts/train.py --preset cpu`.)
#
# The `cpu` preset sets `fit_steps_to_time`: before training, the run times a few compiled steps
# and sets `max_steps` to what fills 92% of the 20-minute limit on *this* machine, so the
# learning rate always finishes its decay (a run cut off by the time limit half-way down the
# cosine would stop with a high learning rate and rougher samples). The plan is written to the
# run's `config.json`, so a resumed run keeps it. Set `max_steps` yourself to turn this off.
#
# It also sets `guide_fraction = 0.15`: at 15% of the steps the run copies its EMA weights into a
# frozen *guide*, a weaker version of the final model that sampling uses for autoguidance
# (section 11, notebook 05). The copy costs nothing during training and is saved in every later
# checkpoint.

# %%
run_dir = tutorial.tutorial_run_dir(PRESET)
if (run_dir / "summary.json").is_file():
    print(f"{run_dir} already holds a finished run: reusing it (delete the folder to train again).")
# train_run(cfg, run_dir) does the work; ensure_run adds "resume if interrupted, reuse if finished"
cfg_run, trainer, summary = tutorial.ensure_run(run_dir, cfg)
print(json.dumps(summary, indent=1))

# %% [markdown]
# ## 10. The training curve

# %%
history = json.loads((run_dir / "history.json").read_text())
fig = plot_training_curve(history, title=f"{PRESET} preset: loss (log scale) and learning rate")
tutorial.show(fig, "training_curve")

# %% [markdown]
# The loss (blue, log scale; faint: every step, bold: moving average) drops fast in the first few
# hundred steps, as the network learns to remove most of the noise, then keeps creeping down while
# the learning rate (orange) rises through the warmup and decays along the cosine. The per-step loss
# stays noisy because every batch draws new timesteps, and some are much harder than others: a
# flat-looking average does not mean learning has stopped, the samples keep improving.

# %% [markdown]
# ## 11. Digits from noise: DDIM with the EMA weights
#
# Sampling starts from pure noise $x_T \sim \mathcal N(0, I)$ and applies the trained denoiser
# step by step. DDIM (Song et al. 2021) takes large steps, so 50-100 network calls suffice instead
# of DDPM's 1,000. Its $\eta$ sets how much fresh noise each step adds: $\eta = 0$ is
# deterministic, $\eta = 1$ is DDPM on the shorter subsequence. The `cpu` preset samples with
# DDIM-100 and $\eta = 1$, which notebook 05 measures to draw clearly better digits from a briefly
# trained model than the deterministic sampler, and with *autoguidance* (Karras et al. 2024): at
# every step it also asks the guide (the EMA weights at 15% of training) and extrapolates away
# from it, $\text{out} = D_{guide} + w\,(D_{final} - D_{guide})$ with $w = 2$. Notebook 05 shows
# what that does to the digits and scores it.

# %%
t0 = time.perf_counter()
samples = trainer.sample(jax.random.key(2026), 100 if PRESET != "tiny" else 16)  # EMA weights
samples.block_until_ready()
print(f"{len(samples)} samples with {cfg_run.sampler.upper()}-{cfg_run.sample_steps} in {time.perf_counter() - t0:.1f} s")
guided = f", autoguidance w = {cfg_run.autoguidance_scale:g}" if cfg_run.autoguidance_scale != 1 else ""
fig = plot_samples(samples, title=f"{cfg_run.sampler.upper()}-{cfg_run.sample_steps} samples, EMA weights, "
                   f"step {summary['steps']}{guided}", ncols=10)
tutorial.show(fig, "samples")

# %% [markdown]
# Each cell is a digit the model made up from a different noise seed. After the full run you should
# see clean, varied digits of all ten classes; notebook 08 measures how clean and how varied, with
# an independent classifier. The run folder also holds `samples.png` and `samples.npy`
# (`cfg.num_samples` of them), written at the end of training.

# %% [markdown]
# ## 12. What to expect, and troubleshooting
#
# **What to expect.** On 2 CPU cores the `cpu` preset trains for about 20 minutes (a faster
# machine fits more steps into them, a slower one fewer); the first recognisable digits appear
# after a few hundred steps, and the last thousand steps (low learning rate) sharpen them. On a GPU the `paper` preset runs 50 epochs (about 11.7k steps of batch 256);
# see the README for measured times.
#
# **GPU memory (TensorFlow and JAX).** TFDS imports TensorFlow, which by default grabs all GPU
# memory, and JAX pre-allocates 75% of it. `import helpers` sets, unless you set them yourself,
# `TF_FORCE_GPU_ALLOW_GROWTH=true`, `XLA_PYTHON_CLIENT_PREALLOCATE=false` and
# `XLA_PYTHON_CLIENT_MEM_FRACTION=0.8`. They only take effect if set **before** TensorFlow or JAX
# start using the GPU: restart the kernel after changing them.
#
# **Out of memory.** JAX reports it as `XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while
# trying to allocate ...`. Lower `batch_size` (e.g. `get_config("paper", batch_size=128)`), use a
# smaller model, and make sure no other process holds the GPU (`nvidia-smi`).
#
# **The loss plateaus.** A diffusion loss that stops falling after the first epoch is normal (see
# the curve above); judge by the samples. If it plateaus high (above ~0.1 for epsilon-MSE), check
# the data range ([-1, 1], not [0, 255]) and the learning rate (the warmup must finish).
#
# **Blurry or blobby samples.** Train longer (the last part of the cosine decay matters), sample
# from the EMA weights, use at least 50 DDIM steps and try $\eta = 1$ (stochastic steps correct
# a young model's errors; notebook 05); `x0` clipping to [-1, 1] is on by default.
# Blobs that look like no digit mean the model is under-trained: that is what the first minutes of
# a CPU run produce.
#
# **NaN loss.** The run stops at once, says at which step, and keeps the last good checkpoint.
# Lower the learning rate and keep gradient clipping on.
#
# **Slow training.** Check `jax.devices()` (is the GPU used?), keep `log_every` at 25 or more
# (each chunk costs one host round trip), and run `python benchmarks/benchmark.py` to compare your
# images/s with the README's figures.
