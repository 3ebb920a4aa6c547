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
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), commit 47423ea; the notebook took 24 min 16 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# This is the heart of the collection: the complete training run of the reference tutorial
# (Artifex's ["Training a Diffusion Model on MNIST"](https://docs.avitai.bio/artifex/examples/basic/diffusion-mnist)), step by step, in JAX, Flax NNX
# and optax. We set up the configuration, data and model, build the optimiser (AdamW with warmup +
# cosine decay and gradient clipping), the loss and the exponential moving average (EMA) of the
# weights, read the train step line by line, run it in a short loop of our own, then hand the long
# run to `helpers.runs.train_run` and look at what it learned: the loss curve, the loss per noise
# level, and digits drawn at checkpoints along the way.
#
# The run is saved to `runs/tutorial-<preset>/` with checkpoints; the later notebooks reuse it. On a
# GPU the `paper` preset runs the reference's full 50 epochs; on a laptop CPU the `cpu` preset
# trains a smaller model for 9,000 steps, about 20 minutes on two cores.

# %%
import inspect
import json
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from tqdm import tqdm  # the text bar, as helpers uses: Jupyter, terminals and the docs site show it

import helpers  # noqa: F401  (sets TF/JAX GPU-memory variables first)
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers import data
from helpers.checkpoints import CheckpointManager
from helpers.config import PRESETS, get_config
from helpers.losses import loss_weights, per_example_loss, prediction_target
from helpers.metrics import get_evaluator
from helpers.plotting import plot_samples, plot_training_curve
from helpers.posthoc_ema import combination, gamma_of, profile, snapshot_files
from helpers.runs import autoguidance_of, draw_samples, load_run, use_posthoc_ema
from helpers.schedules import NoiseSchedule
from helpers.training import (EMA, TrainState, compiled_train_step, ema_decay_at, make_optimizer, make_plan,
                              train_step)
from helpers.unet import count_params, create_unet

PRESET = tutorial.setup("04_train_ddpm")

# %% [markdown]
# ## 1. Configuration
#
# Every hyperparameter lives in one frozen dataclass, `helpers.config.Config`. Three presets:
# `paper` is the reference tutorial (50 epochs of batch 256, UNet 64/128/256, Huber loss, AdamW
# 1e-4); `cpu` is what two CPU cores train in about 20 minutes; `tiny` runs in seconds for tests.
# Any field can be overridden: `get_config("cpu", batch_size=32)` here, `--batch-size 32` on the
# command line.

# %%
cfg = get_config(PRESET)
print(json.dumps({k: v for k, v in json.loads(cfg.to_json()).items() if k != "model"}, indent=None))
print("model:", cfg.model)

# %% [markdown]
# ## 2. Data on the device
#
# As in notebook 01: the uint8 training set goes to the device once; the train step gathers each
# batch from an on-device permutation and scales it to [-1, 1] at 32x32.

# %%
images, labels = data.load_split(cfg.dataset, "train", limit=cfg.train_limit)
images_d = jax.device_put(images)
steps_per_epoch = data.steps_per_epoch(len(images), cfg.batch_size)
plan = make_plan(cfg, len(images))  # what the run will do, fixed before its first step (section 10)
print(f"{len(images):,} training images; {steps_per_epoch:,} steps per epoch at batch {cfg.batch_size}; "
      f"the preset's plan: {plan.total_steps:,} steps ({plan.total_steps / steps_per_epoch:.1f} epochs)")

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
# 1000 steps" while its code uses 500; the `paper` preset uses 500.)

# %%
lr_schedule = plan.learning_rate  # make_lr_schedule(peak, warmup, total steps, end fraction)
steps = np.arange(plan.total_steps)
fig, ax = plt.subplots(figsize=(8, 3))
ax.plot(steps, np.asarray(lr_schedule(steps)), color="tab:orange")
ax.set(xlabel="step", ylabel="learning rate",
       title=f"{PRESET}: warmup {cfg.warmup_steps} steps, cosine decay to {cfg.end_lr_fraction:.0%} of {cfg.learning_rate:g}")
ax.grid(True, alpha=0.3)
fig.tight_layout()
tutorial.show(fig, "lr_schedule")

# %% [markdown]
# A short ramp, a peak, and a long smooth decay: late in training the small steps let the weights
# settle, which is when samples become sharp.
#
# ## 5. Optimiser: AdamW with gradient clipping
#
# `optax.chain(clip_by_global_norm(1.0), scale_by_adam(), add_decayed_weights(wd), -learning_rate)`,
# which is optax's own `adamw` chain after clipping: clipping caps the norm of the gradient that
# enters Adam (the occasional batch of nearly-clean images at t near 0 can produce large gradients),
# AdamW adapts the step size per parameter and decays weights separately from the gradient
# ([Loshchilov & Hutter 2019](https://arxiv.org/abs/1711.05101)). The learning rate is given to each step (`lr_schedule(step)`), not baked into the
# optimiser, so that one compiled step serves every plan (a run with a time budget times the very
# step it then trains with). `nnx.Optimizer`
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
# Training draws a clean image $x_0$, a timestep $t$ and noise $\varepsilon \sim \mathcal N(0, I)$,
# and makes $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ (notebook 02).
# What should the network output? Three choices carry the same information:
#
# - **$\varepsilon$-prediction** ([Ho et al. 2020](https://arxiv.org/abs/2006.11239), the reference and the `paper` preset): the noise.
#   The clean image then follows as $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon) /
#   \sqrt{\bar\alpha_t}$, which divides by $\sqrt{\bar\alpha_t} \approx 0$ at the noisiest steps:
#   there a small error in $\hat\varepsilon$ becomes a large error in $\hat x_0$.
# - **$v$-prediction** ([Salimans & Ho 2022](https://arxiv.org/abs/2202.00512), "Progressive distillation", sec. 4; the `cpu` preset):
#   the velocity $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$, a mix that is
#   mostly noise at small $t$ and mostly image at large $t$. Both quantities follow without any
#   division: $\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v$ and
#   $\hat\varepsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,\hat v$
#   (`helpers.losses.to_x0_and_eps`), so every sampler works with it unchanged.
# - **$x_0$-prediction**: the clean image itself (`prediction="x0"`).
#
# How errors count. The reference measures the error with the **Huber** loss (quadratic for small
# errors, linear for large ones, so a few very wrong pixels do not dominate the gradient). The
# `cpu` preset uses plain MSE with **min-SNR-$\gamma$ weighting** ([Hang et al. 2023](https://arxiv.org/abs/2303.09556), "Efficient
# diffusion training via min-SNR weighting strategy", eq. 9): with the signal-to-noise ratio
# $\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$, each example's error on $x_0$ is weighted by
# $\min(\mathrm{SNR}(t), \gamma)$, $\gamma = 5$. Nearly clean images (huge SNR) then stop
# dominating the loss: their noise is almost invisible, easy to over-fit and matters little for
# samples. Since $x_0 - \hat x_0 = \sqrt{1-\bar\alpha_t}\,(\hat v - v)$, the same weight on the $v$
# error is $\min(\mathrm{SNR}, \gamma) / (\mathrm{SNR} + 1)$:

# %%
schedule = NoiseSchedule.create(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
t_all = jnp.arange(cfg.num_timesteps)
fig, ax = plt.subplots(figsize=(7, 3))
for prediction in ("epsilon", "v", "x0"):
    ax.plot(t_all, loss_weights("min_snr", prediction, schedule, t_all, cfg.min_snr_gamma),
            label=f"on the {prediction} error" + (" (cpu preset)" if prediction == PRESETS["cpu"].prediction else ""))
ax.set(xlabel="timestep t", ylabel="weight", yscale="log",
       title=f"min-SNR-{cfg.min_snr_gamma:g} weights, {cfg.schedule} schedule")
ax.legend()
ax.grid(True, alpha=0.3)
fig.tight_layout()
tutorial.show(fig, "min_snr_weights")

# %% [markdown]
# On the $v$ error (orange) the weight peaks at $\gamma/(\gamma+1)$ where $\mathrm{SNR} = \gamma$ and falls
# towards 0 at both ends: at small $t$, where the noise to predict is almost invisible, and at large
# $t$, where the image is almost all noise and the sampler's later steps correct what the first ones
# get wrong. The training loss is made of the middle noise levels, where the digit takes shape
# (section 12 measures it on the trained model). (Notebook
# 09 compares min-SNR with uniform weighting at equal compute.) The two loss shapes:

# %%
err = jnp.linspace(-3, 3, 121)[:, None, None, None]
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(err[:, 0, 0, 0], per_example_loss("mse", err, jnp.zeros_like(err)), label="MSE (squared error)")
ax.plot(err[:, 0, 0, 0], per_example_loss("huber", err, jnp.zeros_like(err), 1.0), label="Huber, delta = 1")
ax.set(xlabel="prediction error", ylabel="loss")
ax.legend()
ax.grid(True, alpha=0.3)
fig.tight_layout()
tutorial.show(fig, "huber_vs_mse")

# %% [markdown]
# The two agree (up to the factor 1/2) for errors below 1; beyond that, Huber grows linearly.
#
# ## 7. EMA of the weights
#
# Samples come from an exponential moving average of the weights,
# $\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta$ after each optimiser step, which smooths out the
# noise of the last updates. The
# reference uses $d = 0.9999$ every 10 steps, but its run has 11,750 steps, i.e. 1,175 EMA
# updates: $0.9999^{1175} = 0.89$, so **89% of the average would still be the random initial
# weights** and its samples would be noise. We use the standard warm-up, $d_n = \min(d, (1 + n) /
# (10 + n))$ after $n$ updates, which averages over the recent past at any run length:

# %%
n = np.arange(1, 12_000)
fig, ax = plt.subplots(figsize=(7, 3))
for warm in (False, True):
    d = np.broadcast_to(np.asarray(ema_decay_at(0.9999, n, warm)), n.shape)
    ax.plot(n, np.cumprod(d), label=f"decay 0.9999 {'with' if warm else 'without'} warm-up")
ax.set(xlabel="EMA updates", ylabel="share of initial weights", yscale="log")
ax.legend()
ax.grid(True, alpha=0.3)
fig.tight_layout()
tutorial.show(fig, "ema_warmup")

# %% [markdown]
# Without warm-up (blue) the initial weights still make up most of the average after a thousand
# updates; with warm-up (orange) their share falls below 1% within the first few updates. With warm-up
# the decay a run actually reaches is set by its length: after $n$ updates it is
# $\min(d, (1+n)/(10+n))$, and the average then spans about $1/(1-d_n)$ updates. For each preset's
# planned length:

# %%
def ema_reach(c, steps: int) -> str:
    updates = steps // c.ema_every
    d = float(ema_decay_at(c.ema_decay, updates, c.ema_warmup))
    return (f"{updates:,} updates of every {c.ema_every} step(s): decay {d:.4f} at the last one, "
            f"an average over the last ~{c.ema_every / (1 - d):,.0f} steps")


for name in ("paper", "cpu"):
    c = PRESETS[name]
    planned = make_plan(c, 60_000).total_steps
    print(f"{name:6s} ({planned:,} planned steps, ema_decay {c.ema_decay}): {ema_reach(c, planned)}")
ema = EMA(model, cfg.ema_decay, cfg.ema_every, cfg.ema_warmup)

# %% [markdown]
# ## 8. The train step
#
# One step of DDPM training (Ho et al. 2020, algorithm 1) with the target and weighting above. This
# is `helpers.training.train_step`, the function every run of the collection trains with:

# %%
print(inspect.getsource(train_step))

# %% [markdown]
# Line by line:
#
# 1. Split the step's key three ways and draw $\varepsilon \sim \mathcal N(0, I)$.
# 2. A DDPM run (the `else` branch) draws $t \sim U\{0, \dots, T-1\}$ for each image; `q_sample`
#    makes $x_t$ in closed form (notebook 02); `prediction_target` is $v$ here (or $\varepsilon$,
#    $x_0$), `loss_weights` the min-SNR weight of each example. (The `flow` branch is flow
#    matching, another way to train the same network, which notebook 08 introduces.)
# 3. A class-conditional model (notebook 10) replaces some labels by "no label", for classifier-free
#    guidance ([Ho & Salimans 2022](https://arxiv.org/abs/2207.12598)).
# 4. `loss_fn` runs the network and averages the weighted per-image errors; `mask` drops the
#    padding of an epoch's short last batch.
# 5. `nnx.value_and_grad` gives the loss and its gradient with respect to the model's parameters;
#    `optimizer.update` applies clipping + AdamW at this step's learning rate, in place.
# 6. `ema.update` moves the average towards the new weights.
#
# The modules are updated in place, the NNX way. Everything a run changes as it trains is gathered
# in one module, `helpers.training.TrainState`: the model, optimiser and EMA built above, the
# autoguidance guide (section 10) and the run's two PRNG keys (data order, per-step noise). That
# state is also exactly what a checkpoint saves. `compiled_train_step` compiles `train_step` once
# with `jax.jit` over the state's pure arrays (`nnx.split` before, `nnx.merge` inside), and donates
# them so XLA updates the buffers in place; `nnx.jit` would walk the whole module graph in Python on
# every call, which costs more than a small model's step. Step $s$'s noise comes from
# `fold_in(noise key, s)`, so it depends only on the seed and $s$. The first call compiles, later
# calls only run:

# %%
train_state = TrainState(cfg)  # sections 3, 5 and 7's parts, built again from the same config and seed
print("TrainState holds:", ", ".join(k for k in vars(train_state) if not k.startswith("_")))
data_key = jax.random.wrap_key_data(train_state.keys[...][0])  # the run's data-order key (section 9)
order = data.epoch_order(data_key, 0, len(images), cfg.batch_size)
graphdef, state = nnx.split(train_state)  # the step donates these arrays: `train_state` is updated after the loop
for s in range(3):
    x0, _, mask = data.get_batch(images_d, None, order, s, cfg.batch_size)
    t0 = time.perf_counter()
    state, metrics = compiled_train_step(graphdef, state, x0, None, mask, np.int32(s), lr_schedule(s), cfg=cfg)
    loss = float(metrics["loss"])
    print(f"step {s}: loss {loss:.4f}, grad norm {float(metrics['grad_norm']):.3f}, "
          f"{time.perf_counter() - t0:.2f} s{' (includes compilation)' if s == 0 else ''}")

# %% [markdown]
# ## 9. A training loop of our own
#
# Now a few hundred steps in a plain loop. Two details make it fast: the loop never waits for a
# step's result (JAX dispatches the next step while the previous one runs), and the losses stay on
# the device until the end of each chunk, when one `np.asarray` reads them all. Reading `float(loss)`
# after every step would make Python wait for each step in turn.

# %%
LOOP_STEPS, CHUNK = (8, 4) if tutorial.quick() else (200, 50)


def train_loop(graphdef, state, learning_rate, first_step: int, num_steps: int):
    """`num_steps` train steps from `first_step`; returns the new state and the losses."""
    losses = []
    with tqdm(total=num_steps, desc="our loop", unit="step") as bar:
        for start in range(first_step, first_step + num_steps, CHUNK):
            chunk = []
            for s in range(start, start + CHUNK):
                if s % steps_per_epoch == 0 or s == start:  # the epoch's order of the images
                    order = data.epoch_order(data_key, s // steps_per_epoch, len(images), cfg.batch_size)
                x0, _, mask = data.get_batch(images_d, None, order, s % steps_per_epoch, cfg.batch_size)
                state, metrics = compiled_train_step(graphdef, state, x0, None, mask, np.int32(s),
                                                     learning_rate(s), cfg=cfg)
                chunk.append(metrics["loss"])  # still on the device: no waiting
            losses += np.asarray(jnp.stack(chunk)).tolist()  # the one read per chunk
            bar.update(CHUNK)
            bar.set_postfix(loss=f"{np.mean(losses[-CHUNK:]):.4f}")
    return state, losses


t0 = time.perf_counter()
state, loop_losses = train_loop(graphdef, state, lr_schedule, first_step=3, num_steps=LOOP_STEPS)
nnx.update(train_state, state)
seconds = time.perf_counter() - t0
print(f"{LOOP_STEPS} steps in {seconds:.1f} s ({LOOP_STEPS * cfg.batch_size / seconds:.0f} images/s); mean loss of "
      f"the first chunk {np.mean(loop_losses[:CHUNK]):.4f}, of the last {np.mean(loop_losses[-CHUNK:]):.4f}")

# %% [markdown]
# The printed means show the loss falling within the first few hundred steps (the learning rate is
# still warming up). That loop is all of training; the rest is bookkeeping.
#
# ## 10. The full run
#
# `helpers.runs.train_run` trains a fresh `TrainState` of its own with the same `compiled_train_step`, in
# `helpers.training.train`: a plain loop over chunks of `log_every` steps, dispatched back to back and
# read once, after each of which a few small *hooks* run in turn: stop at a NaN loss, record the
# history (and each epoch's mean loss), take the guide, save an Orbax checkpoint (JAX's checkpointing
# library; written in the background), move the progress bar. It also writes the run folder. If this notebook is stopped,
# run the cell again: it resumes from the last checkpoint. (From a terminal:
# `python scripts/train.py --preset cpu --out runs/tutorial-cpu`.)
#
# What the run will do is fixed before its first step, in a `Plan` made from the config (section 2):
# the number of steps, the learning rate at each (section 4), the step at which the guide is taken,
# the checkpoint steps. The `cpu` preset trains 9,000 steps, about 20 minutes on two CPU cores, so the
# same command with the same seed trains the same run on any machine, only faster or slower. A time
# budget is an option (`get_config("cpu", minutes=10)`, or `--minutes 10`): the run times one step,
# plans the steps that fill the budget, and writes that plan to `plan.json`; it never re-plans.
#
# The preset also sets `guide_fraction = 0.15`: at 15% of the steps (the step printed below) the run
# copies its EMA weights
# into a frozen *guide*, a weaker version of the final model that sampling uses for autoguidance
# (section 14, notebook 07). And it keeps a checkpoint every 2,000 steps besides the last three
# (`keep_checkpoints_every`), for section 13. Besides the files the run lists when it ends, its folder
# holds `history.json` (the logged loss and learning rate, which section 11 plots) and
# `summary.json` (the figures printed below).

# %%
guide_at = f"guide at step {plan.guide_step:,}" if plan.guide_step is not None else "no guide"
print(f"the plan: {plan.total_steps:,} steps, {guide_at}, "
      f"checkpoints at steps {', '.join(f'{s:,}' for s in plan.checkpoint_steps[:4])}, ...")
run_dir = tutorial.tutorial_run_dir(PRESET)
if (run_dir / "summary.json").is_file():
    print(f"{run_dir} already holds a finished run: reusing it (delete the folder to train again).")
# train_run(cfg, run_dir) does the work; ensure_run adds "resume if interrupted, reuse if finished"
cfg_run, run_state, summary = tutorial.ensure_run(run_dir, cfg)
print(json.dumps(summary, indent=1))
print(f"this run's EMA: {ema_reach(cfg_run, summary['steps'])}")

# %% [markdown]
# ## 11. The training curve

# %%
history = json.loads((run_dir / "history.json").read_text())
fig = plot_training_curve(history, title=f"{PRESET} preset: loss (log scale) and learning rate")
tutorial.show(fig, "training_curve")
lr_gap = np.max(np.abs(np.asarray(history["lr"]) - np.asarray(lr_schedule(np.asarray(history["step"])))))
print(f"the learning rate the run used at its {len(history['step']):,} logged steps differs from section 4's "
      f"schedule by at most {lr_gap:.1e}")

# %% [markdown]
# The loss (blue, log scale; faint: every step, bold: moving average) drops fast in the first few
# hundred steps, most steeply around the end of the warm-up, when the learning rate (orange) reaches
# its peak, and the network learns to remove most of the noise; it then keeps creeping down as the learning rate decays along the
# cosine (section 4's schedule, as the printed check confirms). The per-step loss
# stays noisy because every batch draws new timesteps, and some are much harder than others. The
# next figure shows how much harder.
#
# ## 12. The loss at each noise level
#
# The training loss averages over all $t$. Here the trained EMA model's error on 256 test digits,
# at 20 timesteps across the range, each with fresh noise: the plain MSE of its $v$ prediction, and
# the same after the min-SNR weight of section 6, which is what training minimised.

# %%
test_images, _ = data.load_split(cfg.dataset, "test", limit=256)
x0_test = data.to_model_range(jax.device_put(test_images[:256]))
ts = np.linspace(0, cfg_run.num_timesteps - 1, 20).astype(int)


def loss_per_timestep(model, c, ts, key) -> np.ndarray:
    """Rows (unweighted error, weighted error, weight) of `model` on the test digits at each t in `ts`."""
    schedule = NoiseSchedule.create(c.schedule, c.num_timesteps, c.beta_start, c.beta_end)

    @nnx.jit
    def at(model, t, key):
        t_batch = jnp.full((x0_test.shape[0],), t)
        noise = jax.random.normal(key, x0_test.shape)
        x_t = schedule.q_sample(x0_test, t_batch, noise)
        error = per_example_loss("mse", model(x_t, t_batch, None),
                                 prediction_target(c.prediction, x0_test, noise, schedule, t_batch))
        weights = loss_weights(c.loss_weighting, c.prediction, schedule, t_batch, c.min_snr_gamma)
        return jnp.mean(error), jnp.mean(error * weights), weights[0]

    return np.array([[float(v) for v in at(model, int(t), jax.random.fold_in(key, int(t)))] for t in ts])


per_t = loss_per_timestep(run_state.ema.model, cfg_run, ts, jax.random.key(3))
fig, ax = plt.subplots(figsize=(8, 3.2))
ax.plot(ts, per_t[:, 0], "o-", label=f"MSE of the {cfg_run.prediction} prediction")
ax.plot(ts, per_t[:, 1], "s-", label=f"weighted ({cfg_run.loss_weighting}), what training minimises")
ax.set(xlabel="timestep t", ylabel="loss on 256 test digits", yscale="log")
ax2 = ax.twinx()
ax2.plot(ts, per_t[:, 2], color="gray", ls=":", label="weight")
ax2.set_ylabel("weight", color="gray")
ax.legend(loc="upper center", fontsize=8)
ax.grid(True, alpha=0.3)
fig.tight_layout()
tutorial.show(fig, "loss_per_timestep")
worst, best = ts[np.argmax(per_t[:, 0])], ts[np.argmin(per_t[:, 0])]
print(f"unweighted error: highest at t = {worst} ({per_t[:, 0].max():.4f}), lowest at t = {best} "
      f"({per_t[:, 0].min():.4f}); weighted: highest at t = {ts[np.argmax(per_t[:, 1])]}")

# %% [markdown]
# The error is far from uniform over $t$. Unweighted (circles), the $v$ error is largest at the
# smallest $t$, where $v$ is almost pure noise that the network can barely see, smallest in the
# middle, and rises again towards $t = T$. The min-SNR weight (dotted) removes both ends, so the loss
# that training minimises (squares) comes from the middle noise levels; the printed extremes say
# where.
#
# ## 13. Digits at checkpoints during training
#
# The checkpoints kept along the way, each sampled from the same noise with the run's sampler and
# its EMA weights, without autoguidance, to show what the network itself has learned: a row per
# training step.

# %%
kept = CheckpointManager(run_dir / "checkpoints").steps()
rows = {}
for step in kept:
    _, snapshot = load_run(run_dir, step=step)
    rows[f"step {step:,}"] = draw_samples(cfg_run, snapshot, jax.random.key(7), 10, autoguidance=None)
fig = tutorial.plot_image_rows(rows, ncols=10, title="the same noise, sampled at each kept checkpoint (EMA weights)")
tutorial.show(fig, "samples_at_checkpoints")

# %% [markdown]
# Read the rows top to bottom: by the first kept checkpoint (step 2,000) most noise seeds already
# draw the digit they end as; the first column is the exception, a blot that settles into a 7 only
# in the later rows. The later rows, trained at an ever smaller learning rate, mostly clean up and
# firm up the strokes.
#
# ## 14. Digits from noise: DPM-Solver++ with autoguidance
#
# Sampling starts from pure noise $x_T \sim \mathcal N(0, I)$ and applies the trained denoiser
# step by step; notebooks 06 and 07 explain the samplers. The `cpu` preset samples with the stochastic
# DPM-Solver++(2M) ([Lu et al. 2022](https://arxiv.org/abs/2211.01095)) in 35 steps, and with
# *autoguidance* ([Karras et al. 2024](https://arxiv.org/abs/2406.02507)): at every step but the last,
# nearly clean ones ($t < 167$) it also asks the guide (the EMA weights at 15% of training, section 10)
# and extrapolates away from it,
# $\text{out} = D_{guide} + w\,(D_{final} - D_{guide})$, where $D$ is a network's estimate of the
# clean image and $w$ is in the figure's title.
# Notebook 07 shows what that does to the digits and scores it.

# %%
t0 = time.perf_counter()
guidance = autoguidance_of(cfg_run, run_state)  # the run's guide and w (None: no autoguidance)
samples = draw_samples(cfg_run, run_state, jax.random.key(2026), 16 if tutorial.quick() else 100,
                       autoguidance=guidance)  # EMA weights
samples.block_until_ready()
print(f"{len(samples)} samples with {cfg_run.sampler}-{cfg_run.sample_steps} in {time.perf_counter() - t0:.1f} s")
guided = f", autoguidance w = {guidance.scale:g}" if guidance else ""
fig = plot_samples(samples, title=f"{cfg_run.sampler}-{cfg_run.sample_steps} samples, EMA weights, "
                   f"step {summary['steps']}{guided}", ncols=10)
tutorial.show(fig, "samples")

# %% [markdown]
# Each cell is a digit the model made up from a different noise seed: mostly clean digits of all
# ten classes, with a few malformed ones; notebook 05 measures how clean and how varied, with
# an independent classifier. The run folder also holds `samples.png` and `samples.npy`
# (`cfg.num_samples` of them), written at the end of training.
# %% [markdown]
# ## 15. Which weights to sample from
#
# The EMA's decay (section 7) and the guide's step (section 10) were fixed before training, yet the
# best average depends on how long the run trained and on guidance, and the guide's best differs
# from the model's ([Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
# Models"](https://arxiv.org/abs/2312.02696), section 3). Their answer, *post-hoc EMA*, chooses after
# training. The run tracked two more averages, *power-function* EMAs: after $t$ steps,
# $\hat\theta_t = \beta_t \hat\theta_{t-1} + (1 - \beta_t)\,\theta_t$ with
# $\beta_t = (1 - 1/t)^{\gamma + 1}$, which weighs step $\tau$ in proportion to $\tau^\gamma$. Their
# *length* $\sigma_{rel}$ is the width (standard deviation) of those weights relative to $t$; the
# preset tracks 0.05 and 0.10 (`cfg.ema_lengths`) and saves both at every checkpoint step in the run
# folder's `ema_snapshots/`. Each snapshot is a known weighted sum of the weights the run went
# through, so the average of any other length is, nearly, a sum of snapshots: least squares finds
# the coefficients (`helpers.posthoc_ema`). The solid lines are the weights wanted, the dotted ones
# the snapshots' best combination; the legend gives how far apart they are (the share of weight
# misplaced).

# %%
steps_done, snapshot_steps = summary["steps"], list(snapshot_files(run_dir))
tracked = [(s, length) for s in snapshot_steps for length in cfg_run.ema_lengths]
print(f"{len(snapshot_steps)} snapshot steps x the lengths {cfg_run.ema_lengths}: {len(tracked)} snapshots")
basis = np.stack([profile(gamma_of(length), s, steps_done) for s, length in tracked], axis=1)
fig, ax = plt.subplots(figsize=(8, 3.2))
for length, color in zip((0.03, 0.05, 0.10, 0.20), ("C0", "C1", "C2", "C3")):
    x, misplaced = combination(tracked, steps_done, length)
    ax.plot(np.arange(1, steps_done + 1), profile(gamma_of(length), steps_done, steps_done), color=color,
            label=f"sigma_rel = {length:g} ({misplaced:.1%} misplaced)")
    ax.plot(np.arange(1, steps_done + 1), basis @ x, color=color, linestyle=":")
# the run's own EMA (section 7): update n, after step every * (n + 1), weighs its weights (1 - d_n) prod_m>n d_m
decays = np.asarray(ema_decay_at(cfg_run.ema_decay, np.arange(steps_done // cfg_run.ema_every), cfg_run.ema_warmup))
own = (1 - decays) * np.append(np.cumprod(decays[::-1])[::-1][1:], 1.0)
at = cfg_run.ema_every * np.arange(1, len(own) + 1)
own_length = np.sqrt(own @ (at - own @ at) ** 2 / own.sum()) / steps_done
ax.plot(at, own / cfg_run.ema_every, color="black", linewidth=1, label=f"the run's own EMA (sigma_rel = {own_length:.3f})")
ax.set(xlabel="training step", ylabel="weight in the average",
       title="EMA profiles after the last step: wanted (solid) and rebuilt from the snapshots (dotted)")
ax.legend(fontsize=8)
tutorial.show(fig, "ema_profiles")

# %% [markdown]
# The two tracked lengths are rebuilt exactly (no weight misplaced); a shorter or a longer one only
# nearly, with a few percent of the weight in the wrong place, because the snapshots are 500 steps
# apart. The run's own EMA (black; its length in the legend) lies between the two tracked ones: with
# section 7's warm-up its decay is $(1 + n)/(10 + n) \approx 1 - 9/n$ after $n$ updates, so it is itself
# nearly a power-function EMA ($\gamma \approx 8$) until the decay reaches 0.999, near the run's last step.

# %% [markdown]
# Now the digits. Each setting below draws 1,000 samples from the same three noise seeds with the
# run's sampler and guidance, and notebook 05's classifier scores them twice: against 10,000
# *training* digits, the reference to choose a setting on, and against the test digits, the
# reference to report it on (a setting chosen and reported on one reference flatters itself). "own"
# is what the run samples with: its EMA of decay 0.999 and its guide. The guides tried are averages
# of length 0.15 taken before and after the run's own guide step.

# %%
MODEL_LENGTHS, GUIDE_LENGTH = (0.05, 0.15), 0.15
evaluator = get_evaluator(quick=tutorial.quick())
n_draw, seeds = (16, (0,)) if tutorial.quick() else (1000, (0, 1, 2))
settings = {"model own, guide own": (None, None, None)}
settings |= {f"model {m:g}, guide own": (m, None, None) for m in MODEL_LENGTHS}
if run_state.guide is not None and cfg_run.autoguidance_scale != 1:  # steps 1,000 and 2,000 of the cpu run
    for at in sorted({min(snapshot_steps, key=lambda s: abs(s - f * steps_done)) for f in (1 / 9, 2 / 9)}):
        settings[f"model own, guide {GUIDE_LENGTH:g} at step {at:,}"] = (None, GUIDE_LENGTH, at)
ema_fd = {}
print(f"{'setting':34s} {'FD to training digits':>22s} {'FD to test digits':>22s}  confident  FD to training, "
      f"minus own's, seed by seed")
for name, (model_length, guide_length, guide_at) in settings.items():
    _, weights = load_run(run_dir)
    if model_length is not None:
        use_posthoc_ema(run_dir, weights, model_length)
    if guide_length is not None:
        use_posthoc_ema(run_dir, weights, guide_length, guide_at, guide=True)
    guidance = autoguidance_of(cfg_run, weights)
    scores = [evaluator.evaluate(draw_samples(cfg_run, weights, jax.random.key(seed), n_draw, autoguidance=guidance))
              for seed in seeds]
    ema_fd[name] = train_fd = [q["frechet_distance_train"] for q in scores]
    test_fd, confident = [q["frechet_distance"] for q in scores], [q["confident_share"] for q in scores]
    paired = " ".join(f"{a - b:+.1f}" for a, b in zip(train_fd, ema_fd["model own, guide own"]))
    print(f"{name:34s} {np.mean(train_fd):6.1f} ({min(train_fd):5.1f}-{max(train_fd):5.1f}) "
          f"{np.mean(test_fd):9.1f} ({min(test_fd):5.1f}-{max(test_fd):5.1f})  {np.mean(confident):8.1%}  {paired}")

# %% [markdown]
# Each setting's range over the three seeds overlaps every other's, and the seeds move FD by about
# 10, more than any setting moves its mean: by the rule these notebooks follow (a difference counts only
# beyond the seeds' spread), all of them are level. Read seed by seed (the last column: the same
# noise through other weights), two settings move the same way on every seed: the model's average
# of length 0.15 scores a little worse than its own, and the guide taken at step 1,000 is worse on
# every seed too, by more on average; the guide taken at step 2,000 is better on two seeds and worse
# on one. So for this run the
# EMA fixed before training was already as good as any chosen after it; what post-hoc EMA buys is
# the freedom to look, without training again. `benchmarks/ema_sweep.py` runs the same comparison on
# any run folder, with more lengths and guide steps (the docs site's Results page shows it).

# %% [markdown]
# ## 16. The `cpu` preset: what it changes from the reference, and why
#
# Now that every idea it uses has been met, the preset itself. The reference's recipe (`paper`) is
# made for a GPU: a wider UNet, 50 epochs of batch 256. The `cpu` preset has a budget of about 20
# minutes on two CPU cores instead. Its main changes were chosen by comparing runs at equal
# training time there (notebook 09 repeats a few of them at 4.5 minutes). The values are read from
# the presets themselves:

# %%
WHY_CPU_DIFFERS = {  # field: why the cpu preset changes it
    "model.hidden_dims": "a narrower UNet runs several times the images/s, so it sees more epochs in 20 minutes",
    "model.channel_mult": "(the cpu preset gives its widths directly)",
    "model.patch_size": "2x2 patches (space-to-depth): each step about 4x cheaper on a CPU",
    "model.num_res_blocks": "a second block per level costs more per step than it returns in 20 minutes",
    "model.attention_resolutions": "attention only at the coarsest level, a 4x4 feature map",
    "model.activation": "SiLU: cheaper than GELU's tanh on a CPU",
    "model.time_embedding_dim": "scaled down with the widths",
    "model.max_norm_groups": "GroupNorm groups scaled down with the widths",
    "max_steps": "9,000 steps, about 20 minutes on two CPU cores: a fixed plan (section 10)",
    "batch_size": "more, smaller steps in a fixed time",
    "learning_rate": "a short run needs larger steps; clipping keeps them stable",
    "warmup_steps": "a shorter run, a shorter warm-up",
    "prediction": "v-prediction (section 6): better digits than epsilon in 20-minute runs",
    "loss": "MSE with min-SNR weighting (section 6) instead of Huber",
    "loss_weighting": "min-SNR-5 (section 6)",
    "weight_decay": "a run of under ten epochs does not over-fit: no weight decay",
    "ema_decay": "average over the last ~1,000 steps of a short run (section 7)",
    "ema_every": "(with ema_decay)",
    "sampler": "DPM-Solver++(2M) SDE: stochastic sampling suits a briefly trained model (notebooks 06, 07)",
    "sample_steps": "35 steps, guided at t >= 167: 57 network evaluations (the docs' Results page)",
    "num_samples": "1,000 samples for the scores of notebook 05",
    "checkpoint_every": "a checkpoint every minute or so of a 20-minute run",
    "guide_fraction": "keep the EMA weights at 15% of the run as the autoguidance guide (section 10)",
    "autoguidance_scale": "extrapolate away from the guide when sampling (section 14, notebook 07)",
    "autoguidance_interval": "no guide at the last, nearly clean steps (notebook 07)",
}


def flat_config(c) -> dict:
    d = json.loads(c.to_json())
    return {**{k: v for k, v in d.items() if k != "model"}, **{f"model.{k}": v for k, v in d["model"].items()}}


paper, cpu = flat_config(PRESETS["paper"]), flat_config(PRESETS["cpu"])
changed = [k for k in paper if paper[k] != cpu[k] and k != "preset"]
print(f"{'field':28s} {'paper':>16s} {'cpu':>16s}  why")
for k in changed:
    print(f"{k:28s} {paper[k]!s:>16s} {cpu[k]!s:>16s}  {WHY_CPU_DIFFERS.get(k, '')}")

# %% [markdown]
# ## 17. What to expect, and troubleshooting
#
# **What to expect.** On 2 CPU cores the `cpu` preset trains its 9,000 steps in about 20 minutes
# (a faster machine takes less time, a slower one more, for the same run); recognisable digits
# appear within the first few thousand steps, and the later steps refine their strokes (section 13).
# On a GPU the `paper` preset runs 50 epochs (11,750 steps of batch 256); `bash
# benchmarks/gpu_benchmark.sh` measures its speed there.
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
# a young model's errors; notebook 06); `x0` clipping to [-1, 1] is on by default.
# Blobs that look like no digit mean the model is under-trained: that is what the first minutes of
# a CPU run produce.
#
# **NaN loss.** The run stops at once, says at which step, and keeps the last good checkpoint.
# Lower the learning rate and keep gradient clipping on.
#
# **Slow training.** Check `jax.devices()` (is the GPU used?), keep `log_every` at 25 or more
# (each chunk costs one host round trip), and run `python benchmarks/benchmark.py` to compare your
# images/s with the docs' Performance page.

# %% [markdown]
# ## Exercises
#
# Each takes a minute or less at the `cpu` preset; the solutions are in collapsed cells (click to
# expand), and the tests run them at `tiny`.
#
# 1. Run the loop of section 9 on a fresh model with a learning rate 10x the preset's peak, without
#    warm-up. What happens to the loss, and why does the preset warm up?
# 2. Plot the min-SNR weights of section 6 on the $v$ error for $\gamma$ = 1, 5 and 20. Which
#    timesteps does a larger $\gamma$ give more weight to?
# 3. What EMA decay does a 500-step run reach with `ema_decay = 0.999`, with and without warm-up,
#    and how much of the initial weights is left in each average?

# %% jupyter={"source_hidden": true}
# Solution 1: the same loop, a fresh model, a constant learning rate of 10x the peak.
fresh_state = nnx.split(TrainState(cfg))[1]
_, hot_losses = train_loop(graphdef, fresh_state, lambda s: 10 * cfg.learning_rate, first_step=0, num_steps=LOOP_STEPS)
print(f"learning rate {10 * cfg.learning_rate:g} from the first step: mean loss of the first chunk "
      f"{np.mean(hot_losses[:CHUNK]):.4f}, of the last {np.mean(hot_losses[-CHUNK:]):.4f} (the preset's warm-up: "
      f"{np.mean(loop_losses[-CHUNK:]):.4f} after the same number of steps)")
# Large first updates on random weights push the network somewhere it must climb back from;
# gradient clipping keeps it from diverging, the warm-up keeps it from wasting the steps.

# %% jupyter={"source_hidden": true}
# Solution 2: a larger gamma caps the weight only at a higher SNR, i.e. at smaller t: more weight on the
# nearly clean images; where the SNR is below gamma (larger t) the curves coincide.
fig, ax = plt.subplots(figsize=(7, 3))
for gamma in (1.0, 5.0, 20.0):
    ax.plot(t_all, loss_weights("min_snr", "v", schedule, t_all, gamma), label=f"gamma = {gamma:g}")
ax.set(xlabel="timestep t", ylabel="weight on the v error", yscale="log")
ax.legend()
fig.tight_layout()
tutorial.show(fig, "exercise_min_snr_gamma")

# %% jupyter={"source_hidden": true}
# Solution 3: the decay after 500 updates, and the share of the initial weights left in the average.
for warm in (True, False):
    d = np.broadcast_to(np.asarray(ema_decay_at(0.999, np.arange(500), warm)), (500,))
    print(f"warm-up {warm!s:5s}: decay {float(d[-1]):.4f} at update 500; share of the initial weights "
          f"{float(np.prod(d)):.2%}")
