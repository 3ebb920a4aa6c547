# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · The same pipeline on Fashion-MNIST
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), commit 6608ba8; the notebook took 10 min 29 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# Fashion-MNIST ([Xiao et al. 2017](https://arxiv.org/abs/1708.07747)) was built as a drop-in replacement for MNIST: 70,000 grey 28x28
# images in ten classes, same split sizes, same file names, but of clothes instead of digits.
# Everything in this collection takes `dataset="fashion_mnist"` (`--dataset fashion_mnist` on the
# command line), so this notebook changes one word and looks at what changes as a result.
#
# Offline, its four archives go in **`<data_dir>/downloads/manual/fashion_mnist/`**: the files have
# the same names as MNIST's, so each dataset needs its own folder.

# %%
import json

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import helpers  # noqa: F401
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers import data
from helpers.config import get_config
from helpers.losses import loss_weights, per_example_loss, prediction_target, sample_timesteps
from helpers.metrics import nearest_neighbours
from helpers.plotting import plot_samples, plot_training_curve
from helpers.runs import draw_samples
from helpers.training import make_plan, noise_schedule

PRESET = tutorial.setup("11_fashion_mnist")
QUICK = tutorial.quick()  # a check of the code: fewer images

# %% [markdown]
# ## 1. The data

# %%
images, labels = data.load_split("fashion_mnist", "train", limit=2000 if QUICK else None)
mnist, _ = data.load_split("mnist", "train", limit=len(images))
names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
print(f"{len(images):,} images; classes: {', '.join(names)}")
per_class = np.stack([images[labels == c][:8] for c in range(10)])  # 8 examples of each class
fig = plot_samples(data.to_model_range(jnp.asarray(per_class.reshape(-1, 28, 28, 1))), ncols=8,
                   row_labels=names, title="Fashion-MNIST: one row per class")
tutorial.show(fig, "fashion_per_class")

# %% [markdown]
# Ten kinds of clothing, centred and upright like MNIST digits, but filled shapes with texture
# (knit patterns, prints, logos) instead of thin strokes.

# %%
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist([mnist.reshape(-1), images.reshape(-1)], bins=32, log=True, label=["MNIST", "Fashion-MNIST"])
ax.set_xlabel("pixel value")
ax.set_ylabel("count (log)")
ax.legend()
fig.tight_layout()
tutorial.show(fig, "pixel_histograms")
print(f"mean pixel: MNIST {mnist.mean():.1f}, Fashion-MNIST {images.mean():.1f}; "
      f"share of mid-grey pixels (50-200): MNIST {np.mean((mnist > 50) & (mnist < 200)):.1%}, "
      f"Fashion {np.mean((images > 50) & (images < 200)):.1%}")

# %% [markdown]
# What changes for the model: MNIST is nearly binary (background or ink), while Fashion-MNIST has
# many more mid-grey pixels and larger non-black areas (a mean pixel twice MNIST's), though fewer
# pure-white ones. The model must get *grey levels and texture*
# right, not only where the strokes are. Expect a higher loss and, at the same budget, samples
# that get the silhouette right before the details.
#
# ## 2. Training, unchanged except for the dataset
#
# The preset's recipe with half its steps (4,500 of 9,000, where notebook 04's MNIST run trains
# all 9,000; the time it took is printed below). The preset's
# autoguidance (notebook 07) is turned off here: it was measured on digits only, and the samples
# below show what the training alone gives.

# %%
overrides = dict(dataset="fashion_mnist", guide_fraction=None, autoguidance_scale=1.0)  # autoguidance off (see above)
overrides.update(max_steps=max(1, make_plan(get_config(PRESET), len(images)).total_steps // 2))  # half the preset's
if not QUICK:
    overrides.update(num_samples=64)
cfg = get_config(PRESET, **overrides)
run_dir = tutorial.runs_dir() / f"fashion-{PRESET}"
cfg, state, summary = tutorial.ensure_run(run_dir, cfg)
print(f"{summary['steps']} steps in {summary['train_seconds'] / 60:.1f} min, final loss {summary['final_loss']:.4f}")

# %%
fig = plot_training_curve(json.loads((run_dir / "history.json").read_text()),
                          title="Fashion-MNIST: loss and learning rate")
tutorial.show(fig, "training_curve")

# %% [markdown]
# The same shape as MNIST's curve in notebook 04: a fast drop, then a slow decline while the
# learning rate decays. The final losses of the two runs:

# %%
mnist_run = tutorial.tutorial_run_dir(PRESET) / "summary.json"
if mnist_run.is_file():
    m = json.loads(mnist_run.read_text())
    print(f"final training loss: MNIST {m['final_loss']:.4f} ({m['steps']} steps), "
          f"Fashion-MNIST {summary['final_loss']:.4f} ({summary['steps']} steps)")

# %% [markdown]
# ## 3. Samples

# %%
x = draw_samples(cfg, state, jax.random.key(9), 64, autoguidance=None)  # autoguidance off (see above)
fig = plot_samples(x, title=f"Fashion-MNIST samples, {cfg.sampler.upper()}-{cfg.sample_steps}, EMA weights", ncols=8)
tutorial.show(fig, "samples")

# %% [markdown]
# After the steps printed in section 2 (about 10 minutes of training) most samples are clearly one of the
# classes: trousers, sneakers, sandals and ankle boots, pullovers and shirts, T-shirts, dresses and
# bags. Shapes come first; the grey levels inside them are still blotchy and noisy, and about one
# sample in six is a shoe or a garment dissolving into speckle. Texture (knit patterns, prints,
# logos) is what a short run gets wrong, and what longer training should improve (not measured
# here). The final training loss is higher than MNIST's, with fewer
# steps behind it: grey-level images leave more to predict (exercise 3 compares the two on held-out
# images).
#
# ## 4. What changes, in short
#
# - **Data**: one word (`dataset="fashion_mnist"`) and, offline, its own manual folder.
# - **Difficulty**: grey levels and texture instead of near-binary strokes: higher loss, slower to
#   sharpen.
# - **Evaluation**: the classifier of notebook 05 knows digits only; a Fashion-MNIST evaluation
#   needs its own classifier trained the same way (`helpers.metrics` is written for MNIST, and
#   `scripts/train.py`, through `helpers.runs.train_run`, skips the quality figures for Fashion-MNIST rather than report meaningless ones).

#
# ## Exercises
#
# Each takes a minute or less on the model trained above; the solutions are in collapsed cells.
#
# 1. Does the model copy its training images? Find each sample's nearest training image (pixel
#    distance) and compare the distances with those of real test images, which are new by definition.
# 2. Section 1 measured the share of mid-grey pixels. Do the samples have as many as the data?
# 3. The training losses of section 2 are averages over the last batches of two runs of different
#    lengths. Measure both models' loss on 1,000 *test* images of their own dataset, with the same
#    timesteps and noise (the MNIST run trained twice as many steps: section 2 prints both).

# %% jupyter={"source_hidden": true}
# Solution 1: nearest-neighbour distances in pixel space (images in [-1, 1]).
train_m11 = np.asarray(data.to_model_range(jnp.asarray(images)))
test_images, test_labels = data.load_split("fashion_mnist", "test", limit=1000)
test_m11 = np.asarray(data.to_model_range(jnp.asarray(test_images)))
sample_nn, sample_index = nearest_neighbours(np.asarray(x), train_m11)
test_nn, _ = nearest_neighbours(test_m11[:len(x)], train_m11)
print(f"distance to the nearest training image: samples {sample_nn.mean():.2f} (smallest {sample_nn.min():.2f}), "
      f"real test images {test_nn.mean():.2f} (smallest {test_nn.min():.2f})")
pairs = np.concatenate([np.asarray(x[:8]), train_m11[sample_index[:8]]])
fig = plot_samples(pairs, ncols=8, title="top: samples; bottom: the nearest training image of each")
tutorial.show(fig, "exercise_nearest_neighbours")

# %% [markdown] jupyter={"source_hidden": true}
# The samples lie about as far from their nearest training image as real test images do (the
# distances above), and none is nearly a copy: most nearest images are the same kind of garment, in a
# different picture, and the speckled samples sit near plainer ones. The model has learnt what clothes look like, not the training set.

# %% jupyter={"source_hidden": true}
# Solution 2: samples back to 0-255 grey levels, then section 1's statistic.
sample_pixels = (np.asarray(x) + 1) * 127.5
print(f"share of mid-grey pixels (50-200): samples {np.mean((sample_pixels > 50) & (sample_pixels < 200)):.1%}, "
      f"training images {np.mean((images > 50) & (images < 200)):.1%}")

# %% [markdown] jupyter={"source_hidden": true}
# The samples have fewer mid-grey pixels than the data: more of their pixels sit near black or
# white, so the subtle shading of real fabric is what the model has not learnt yet.

# %% jupyter={"source_hidden": true}
# Solution 3: the training objective (weighted error of the prediction target) on held-out images.
def test_loss(run_cfg, run_state, test_x, key):
    x0 = data.to_model_range(jnp.asarray(test_x))
    t_key, noise_key = jax.random.split(key)
    t = sample_timesteps(t_key, x0.shape[0], run_cfg.num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape)
    schedule = noise_schedule(run_cfg)
    x_t = schedule.q_sample(x0, t, noise)
    error = per_example_loss(run_cfg.loss, run_state.ema.model(x_t, t),
                             prediction_target(run_cfg.prediction, x0, noise, schedule, t))
    return float(jnp.mean(error * loss_weights(run_cfg.loss_weighting, run_cfg.prediction, schedule, t,
                                               run_cfg.min_snr_gamma)))


print(f"test loss: Fashion-MNIST {test_loss(cfg, state, test_images, jax.random.key(0)):.4f}", end="")
if tutorial.tutorial_run_dir(PRESET).is_dir():
    mnist_cfg, mnist_state, _ = tutorial.trained_run(PRESET)
    mnist_test, _ = data.load_split("mnist", "test", limit=1000)
    print(f", MNIST {test_loss(mnist_cfg, mnist_state, mnist_test, jax.random.key(0)):.4f} (notebook 04's run)")

# %% [markdown] jupyter={"source_hidden": true}
# On held-out images, with the same timesteps and noise, Fashion-MNIST's loss is again the higher
# one: the gap is the dataset's, not an artefact of the two runs' last batches.
