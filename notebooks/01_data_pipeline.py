# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The data pipeline: MNIST from disk to device
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), commit 47423ea; the notebook took 7 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# A diffusion model learns to turn noise into images, so before any model we need images: the
# 70,000 handwritten digits of MNIST, in the form the model wants them. This notebook follows the
# data from the original archives to batches that live on the device (the GPU when there is one;
# on a CPU-only machine the CPU itself, with the same code).
#
# You will learn:
# - how TensorFlow Datasets (TFDS) fetches and prepares MNIST, and how to do it **without internet**;
# - why pixels are scaled to [-1, 1] and digits padded from 28x28 to 32x32 with -1;
# - how to shuffle and batch **on the device**, so training never waits for the host.

# %%
import jax
import jax.numpy as jnp
import numpy as np

import helpers  # noqa: F401  (sets the GPU-memory environment variables before TF/JAX allocate)
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers import data
from helpers.plotting import plot_samples

PRESET = tutorial.setup("01_data_pipeline")

# %% [markdown]
# ## 1. Getting MNIST through TFDS
#
# `helpers.data.load_split` asks TFDS for a split. TFDS downloads the four original archives
# (`train-images-idx3-ubyte.gz`, ...), verifies their checksums and writes its own prepared copy to
# `~/tensorflow_datasets` (or `$TFDS_DATA_DIR`). With no internet, put the same four files in
# **`<data_dir>/downloads/manual/mnist/`** and TFDS prepares the dataset from them, checksums
# still verified. If neither works, you get an error that names the files and the folder. Here is
# that message, printed as a demonstration (on this machine the data is prepared, as the next cell
# shows):

# %%
print(data.missing_data_message("mnist", data.default_data_dir()))

# %% [markdown]
# TensorFlow is used only here, to read the prepared files once. The split is then cached as a
# plain `.npz` next to the TFDS data, so later runs skip TensorFlow entirely. Each split arrives
# as uint8 images of shape (N, 28, 28, 1) and integer labels.

# %%
limit = 2_000 if tutorial.quick() else None
train_images, train_labels = data.load_split("mnist", "train", limit=limit)
test_images, test_labels = data.load_split("mnist", "test", limit=limit)
print(f"train: {train_images.shape} {train_images.dtype}, labels {train_labels.shape}")
print(f"test:  {test_images.shape} {test_images.dtype}")
print("digits per class (train):", np.bincount(train_labels, minlength=10))

# %% [markdown]
# The classes are close to balanced (each about 10%), which matters later: a good generator
# should produce all ten digits about equally often, and notebook 05 checks exactly that.

# %% [markdown]
# ## 2. A first look

# %%
first = data.to_model_range(jnp.asarray(train_images[:64]))
fig = plot_samples(first, title="64 training digits", ncols=16, size=0.5)
tutorial.show(fig, "real_digits")

# %% [markdown]
# White strokes on a black background, centred in the frame. These digits are already in the
# model's range and padded to 32x32 (section 3 explains both); the 2-pixel padding is the
# background's own black, so you cannot see it. The white lines are only the gaps between tiles.

# %% [markdown]
# ## 3. Pixel statistics and the model's range
#
# MNIST pixels are mostly background: most are exactly 0 and a smaller group is near 255.

# %%
pixels = train_images.reshape(-1).astype(np.float32)
print(f"mean {pixels.mean():.1f}, std {pixels.std():.1f} (of 255)")
print(f"share of pixels exactly 0: {np.mean(pixels == 0):.1%}; above 200: {np.mean(pixels > 200):.1%}")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(pixels, bins=64, log=True, color="tab:blue")
ax.set_xlabel("pixel value (uint8)")
ax.set_ylabel("count (log scale)")
ax.set_title("MNIST pixel histogram")
fig.tight_layout()
tutorial.show(fig, "pixel_histogram")

# %% [markdown]
# Two peaks: the background at 0 and the ink near 255, with few values in between. A model that
# draws digits has to learn this almost-binary look; blurry samples show up as too many mid-grey
# pixels.
#
# The diffusion process adds Gaussian noise with mean 0 and variance 1, so the data should live on
# a comparable scale, centred on 0: `to_model_range` maps [0, 255] to **[-1, 1]**. It then pads
# 28x28 to **32x32**: the UNet halves its feature maps from level to level (32 -> 16 -> 8; the
# `cpu` preset first folds 2x2 patches into channels, so 16 -> 8 -> 4, notebook 03). From 28 the
# `cpu` UNet would reach 7 at its second level, which cannot be halved again; 32, a power of two,
# halves cleanly at every level of every preset. The padding value is **-1, the
# background colour**, so the border looks like the rest of the background and the model does not
# have to learn a frame.

# %%
x = data.to_model_range(jnp.asarray(train_images[:256]))
print("model input:", x.shape, x.dtype, f"range [{float(x.min()):.1f}, {float(x.max()):.1f}]")
border = jnp.ones((32, 32), bool).at[2:-2, 2:-2].set(False)  # the 2-pixel frame on all four sides
print("2-pixel border all -1:", bool(jnp.all(x[:, border] == -1.0)))
print("back to [0, 1] and cropped to 28x28:", data.from_model_range(x, crop=True).shape)

# %% [markdown]
# ## 4. Shuffling and batching on the device
#
# A typical loader would loop over a `tf.data` pipeline in Python and copy each batch to the
# device. For MNIST the whole training set is 60,000 x 28 x 28 bytes (47 MB) of uint8, so we put it on the device once and
# let the compiled train step pick its own batch:
#
# - `epoch_order(key, epoch, ...)` is a permutation of all examples, derived from the run's seed
#   and the epoch number: every epoch sees every image once, in a new order;
# - `batch_slice(order, position, ...)` cuts batch number `position` out of it. The last batch of an
#   epoch is padded to full size and carries a **mask**, so the step never changes shape (no
#   recompilation) and padded examples do not count in the loss.
#
# Both are pure functions of (seed, step): a run resumed from a checkpoint sees exactly the batches
# the uninterrupted run would have seen.

# %%
key = jax.random.key(0)
batch_size = 256
n = len(train_images)
order = data.epoch_order(key, 0, n, batch_size)
spe = data.steps_per_epoch(n, batch_size)
idx, mask = data.batch_slice(order, spe - 1, n, batch_size)
print(f"{spe} batches per epoch of {n} images; last batch: {int(mask.sum())} real examples, "
      f"{batch_size - int(mask.sum())} padded (mask 0)")
print("every image exactly once per epoch:", np.array_equal(np.sort(np.asarray(order[:n])), np.arange(n)))

# %% [markdown]
# Inside the train step the batch is gathered and converted on the device, all in one compiled
# function:

# %%
images_on_device = jax.device_put(train_images)


@jax.jit
def get_batch(images, order, position):
    idx, mask = data.batch_slice(order, position, n, batch_size)
    return data.to_model_range(images[idx]), mask


batch, mask = get_batch(images_on_device, order, 0)
print("batch:", batch.shape, batch.dtype, "on", batch.devices())

# %%
fig = plot_samples(batch[:32], title="the first 32 images of a shuffled batch", ncols=16, size=0.5)
tutorial.show(fig, "shuffled_batch")

# %% [markdown]
# A random mix of digits: shuffling works, and the images are already in [-1, 1] and 32x32, ready
# for the forward process of notebook 02.
#
# ## Summary
# - `helpers.data.load_split` gives uint8 arrays, from the internet or offline from
#   `<data_dir>/downloads/manual/mnist/`, with a clear message when neither is there.
# - Model range: [-1, 1], padded to 32x32 with the background value -1.
# - The dataset lives on the device; the batch of step *s* is a pure function of (seed, *s*).

# %% [markdown]
# ## Exercises
#
# Each runs in seconds; the solutions are in collapsed cells (click to expand).
#
# 1. Which digit uses the most ink? Compute the mean pixel value (in [0, 1]) of each class.
# 2. With batch 64 (the `cpu` preset, the recipe notebook 04 trains on a CPU), how many batches make an epoch, and how many real images
#    does the last one hold?
# 3. Show that the order of an epoch depends only on (seed, epoch): call `epoch_order` twice with
#    the same arguments, then with the next epoch.

# %% jupyter={"source_hidden": true}
# Solution 1: the mean of each class's images; the printed ranking answers it.
ink = {digit: float(train_images[train_labels == digit].mean()) / 255 for digit in range(10)}
print("mean pixel value per class:", {d: round(v, 3) for d, v in ink.items()})
print("most ink:", max(ink, key=ink.get), "- least:", min(ink, key=ink.get))

# %% jupyter={"source_hidden": true}
# Solution 2: ceil(n / 64) batches; the last one is padded and masked.
spe_64 = data.steps_per_epoch(n, 64)
_, last_mask = data.batch_slice(data.epoch_order(key, 0, n, 64), spe_64 - 1, n, 64)
print(f"batch 64: {spe_64:,} batches per epoch; the last holds {int(last_mask.sum())} real images")

# %% jupyter={"source_hidden": true}
# Solution 3: a pure function of its arguments; the next epoch is another permutation.
same = np.array_equal(data.epoch_order(key, 0, n, batch_size), data.epoch_order(key, 0, n, batch_size))
other = np.array_equal(data.epoch_order(key, 0, n, batch_size), data.epoch_order(key, 1, n, batch_size))
print(f"same (seed, epoch) -> same order: {same}; next epoch -> same order: {other}")
