# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Evaluating samples without downloading anything
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), commit 2249510; the notebook took 1 min 06 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# The training loss says how well the model predicts noise, not whether its digits are any good.
# Before we compare samplers (notebooks 06-07) or training recipes (notebook 09) by the digits they
# draw, we need a ruler. The standard score for image generators is the **Frechet Inception
# Distance** (FID, [Heusel et al. 2017](https://arxiv.org/abs/1706.08500)): pass real images and
# samples through a fixed pretrained network, Inception-v3 (an ImageNet photo classifier), fit a
# Gaussian to each set's features and measure how far apart the two Gaussians are. Inception was
# trained on photographs, not 28x28 digits, and its weights are a download. For MNIST we use the
# same formula with our own ruler: a small CNN classifier, trained once on the MNIST training set
# and shipped with the package (section 1). The feature-space figures (FD, precision and recall) compare
# the samples with the 10,000 MNIST test digits, the nearest-neighbour distance searches the 60,000
# training digits, and confidence and class shares need no reference (section 2 gives the formulas):
#
# | figure | question it answers |
# | --- | --- |
# | Frechet distance (FD) | do the samples' features have the same mean and covariance as real digits'? |
# | share with confidence > 0.9 | does each sample look clearly like *some* digit? |
# | class shares (min / max) | are all ten digits drawn about equally often? |
# | precision / recall (k = 3) | does each sample lie where real digits lie (precision), and do the samples reach all the places real digits lie (recall)? |
# | nearest-training-neighbour distance | is the model making new digits or copying training ones? |
#
# No single figure is enough. Below we score real digits, the trained model, and deliberately
# broken "models", so the numbers mean something.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import helpers  # noqa: F401
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers import data
from helpers.config import get_config
from helpers.metrics import format_table, get_evaluator, nearest_neighbours
from helpers.plotting import plot_samples
from helpers.runs import autoguidance_of, draw_samples
from helpers.sampling import sample
from helpers.training import noise_schedule
from helpers.unet import create_unet

PRESET = tutorial.setup("05_evaluating_samples")
QUICK = tutorial.quick()  # a check of the code: smaller sets
N = 200 if QUICK else 1000

# %% [markdown]
# ## 1. The evaluation classifier
#
# Three 3x3 conv layers (32, 64, 64 channels) with max-pooling, a 128-unit dense layer and a
# linear head; trained for 3 epochs of Adam with random shifts of up to one pixel
# (`tools/export_classifier.py`; the network is `helpers.metrics.Classifier`). The
# **features** are the 128 dense units *before* the ReLU (after it, many are exactly zero, which
# makes the covariance degenerate). Its trained weights ship with the package
# (`helpers/assets/classifier-mnist-v3.npz`, 0.7 MB), as FID ships fixed Inception weights: every
# notebook, `scripts/evaluate.py` and every machine then uses the same ruler, and nobody waits for
# it to train. (At `TUTORIAL_PRESET=tiny` the reference statistics use 2,000 test and 5,000
# training digits instead of all of them: those figures are only a smoke test.)

# %%
evaluator = get_evaluator(quick=QUICK)
test_images, test_labels = data.load_split("mnist", "test", limit=2000 if QUICK else None)
logits, _ = evaluator.predict(data.to_model_range(jnp.asarray(test_images)))
print(f"classifier test accuracy: {np.mean(np.argmax(logits, 1) == test_labels):.2%} "
      f"on {len(test_images):,} test digits")

# %% [markdown]
# ## 2. The figures, precisely
#
# **Reference set.** Every feature-space figure compares the samples with the **10,000 MNIST test
# digits**, all of them (2,000 at `TUTORIAL_PRESET=tiny`), which the classifier never trained on.
# Each image, sample or real, becomes a vector $f \in \mathbb{R}^{128}$: the classifier's dense
# layer before its ReLU. $N$ is the number of samples scored.
#
# **Frechet distance (FD).** Fit a Gaussian to each set of features: mean $\mu_s$ and covariance
# $\Sigma_s$ of the $N$ samples, $\mu_r$ and $\Sigma_r$ of the 10,000 test digits. The Frechet
# distance between the two Gaussians ([Heusel et al. 2017](https://arxiv.org/abs/1706.08500), eq. 6) is
#
# $$\mathrm{FD} = \lVert \mu_s - \mu_r \rVert^2 + \operatorname{Tr}\big(\Sigma_s + \Sigma_r - 2\,(\Sigma_s \Sigma_r)^{1/2}\big).$$
#
# The first term compares where the two clouds of features sit, the second their spread and shape.
# It is 0 only when both means and covariances agree; lower is better. FID is this formula in
# Inception's features, so our FDs are on another scale and are not FIDs.
# `helpers.metrics.frechet_distance` takes the trace of the matrix square root as the sum of the
# square roots of the eigenvalues of $\Sigma_s \Sigma_r$. **FD depends on N**: a covariance estimated
# from few samples is noisy, and the noise only adds to the distance, so even real digits score
# above 0, more at small N (exercise 1). Compare two FDs only at the same N.
#
# **Precision and recall** ([Kynkaanniemi et al. 2019](https://arxiv.org/abs/1904.06991), with
# $k = 3$) ask two separate questions that FD mixes into one number.
#
# - Around each real feature vector, draw a ball whose radius is the distance to its 3rd-nearest
#   real neighbour. The union of these balls estimates the region where real digits lie.
# - **Precision** is the share of samples that fall inside at least one real ball: how many samples
#   look like *some* real digit (quality).
# - Swap the roles: balls around the samples, radii measured among the samples. **Recall** is the
#   share of the 10,000 real digits inside at least one sample ball: how much of the real digits'
#   variety the samples reach (coverage). Both lie between 0 and 1; higher is better.
#
# **Confidence** is the classifier's largest softmax probability for an image. We report the share
# of samples above 0.9 and the **class shares**: the share of samples assigned to each digit, its
# smallest and largest value (the table in section 4 adds the mean confidence and the KL divergence
# of the class shares from the uniform 10%).
#
# **Nearest-training-neighbour distance** is the Euclidean distance between pixel values in
# [-1, 1] (1,024 per image) from a sample to its closest image among the 60,000 training digits,
# averaged over the samples. Copies score 0.
#
# ## 3. Real digits, the trained model, and broken ones
#
# - **real test digits**: the first N of the 10,000 reference digits. They are part of the
#   reference set, so their precision is 1 by construction; for every other figure they show what
#   real digits score, the target a good model aims for (not a strict ceiling: the training-set
#   copies below score a slightly lower FD);
# - **trained model**: the 1,000 samples that notebook 04's run saved (`samples.npy`, section 14
#   there), drawn from its EMA weights (notebook 04, section 7) with the preset's sampler and
#   autoguidance (notebooks 06 and 07 explain both);
# - **untrained UNet**: the network at its initial weights, drawn with the same sampler (without
#   autoguidance, which needs a trained guide);
# - **uniform noise**: random pixels;
# - **blurred digits**: real digits smoothed by a 3x3 box filter twice, the way an under-trained
#   model's samples look;
# - **only 1s**: real digits, but a single class (mode collapse);
# - **training set copies**: real *training* digits, i.e. a model that memorised its data.

# %%
cfg, run_state, summary = tutorial.trained_run(PRESET)
run_samples = np.load(tutorial.tutorial_run_dir(PRESET) / "samples.npy")
if len(run_samples) < N:  # the tiny run saves few samples; draw more from its checkpoint
    run_samples = np.asarray(draw_samples(cfg, run_state, jax.random.key(3), N,
                                          autoguidance=autoguidance_of(cfg, run_state)))
run_samples = run_samples[:N]

test_m11 = np.asarray(data.to_model_range(jnp.asarray(test_images)))
train_images, train_labels = data.load_split("mnist", "train", limit=5000 if QUICK else 20_000)
untrained = sample(create_unet(get_config(PRESET).model, seed=1), noise_schedule(cfg), jax.random.key(4),
                   min(N, 200), sampler=cfg.sampler, steps=cfg.sample_steps, eta=cfg.eta, prediction=cfg.prediction)


def blur(x, times=2):
    k = jnp.ones((3, 3, 1, 1)) / 9.0
    x = jnp.asarray(x)
    for _ in range(times):
        x = jax.lax.conv_general_dilated(x + 1.0, k, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) - 1.0
    return np.asarray(x)


ones = test_m11[test_labels == 1]
sources = {
    "real test digits": test_m11[:N],
    "trained model": run_samples,
    "untrained UNet": np.asarray(untrained),
    "uniform noise": np.asarray(jax.random.uniform(jax.random.key(5), (N, 32, 32, 1), minval=-1, maxval=1)),
    "blurred digits": blur(test_m11[N:2 * N] if len(test_m11) >= 2 * N else test_m11[:N]),
    "only 1s": np.concatenate([ones] * (N // len(ones) + 1))[:N],
    "training set copies": np.asarray(data.to_model_range(jnp.asarray(train_images[:N]))),
}
fig, axes = plt.subplots(1, len(sources), figsize=(2.0 * len(sources), 2.4))
for ax, (name, x) in zip(axes, sources.items()):
    from helpers.plotting import image_grid

    ax.imshow(image_grid(x[:16], 4), cmap="gray", vmin=0, vmax=1)
    ax.set_title(name, fontsize=8)
    ax.axis("off")
fig.tight_layout()
tutorial.show(fig, "sources")

# %% [markdown]
# Sixteen images from each source, left to right in the order of the list above.

# %%
scores = {name: evaluator.evaluate(x) for name, x in sources.items()}
cols = [("FD", "frechet_distance", "{:.1f}"), ("conf>0.9", "confident_share", "{:.1%}"),
        ("min cls", "min_class_share", "{:.1%}"), ("max cls", "max_class_share", "{:.1%}"),
        ("precision", "precision", "{:.2f}"), ("recall", "recall", "{:.2f}"),
        ("NN dist", "nn_train_distance", "{:.2f}")]
print(f"{'source':20s} {'N':>5s} " + " ".join(f"{c[0]:>9s}" for c in cols))
for name, s in scores.items():
    print(f"{name:20s} {s['n']:5d} " + " ".join(f"{c[2].format(s[c[1]]):>9s}" for c in cols))
print(f"\nnearest-training-neighbour distance of real test digits (what 'new digits' score): "
      f"{evaluator.nn_baseline:.2f}")

# %% [markdown]
# How to read it, row by row:
#
# - **Real test digits** set the scale: a small but non-zero FD (finite N, section 2), about 98%
#   confident, every class near 10%. Their precision of 1.00 holds by construction (they are part
#   of the reference set); the training-set copies below show what new real digits score.
# - **Uniform noise** and the **untrained UNet** (its zero-initialised output layer predicts 0
#   everywhere, so the sampler hands back noise: the figure shows speckle, not a digit) have huge
#   FDs and zero precision, yet the classifier is *confident* on them, all in one class: that is
#   why confidence is never read alone. (The untrained row has 200 samples, not 1,000; at this size
#   of FD that does not matter.)
# - **Blurred digits** keep their classes and even their precision (each one is near some real
#   digit), but lose confidence, and recall collapses: blur removes the variety of stroke detail.
#   This is what an under-trained model's samples look like.
# - **Only 1s** are as confident as real digits, but the class shares (one class at nearly 100%)
#   and the recall collapse: mode collapse shows in coverage, not in confidence.
# - **Training set copies** score like real digits on FD, confidence, class shares and recall; their
#   precision is what real digits outside the reference set score. Their nearest-training-neighbour
#   distance is **0** (0.01, rounding): memorisation shows only in that column. A good
#   model's samples should sit about as far from the training set as real test digits do.
# - **The trained model** should land between the real digits and the broken ones; how close to the
#   real row it gets is the measure of the run. Here (notebook 04's run, the table's second row):
#   a Frechet distance far below every broken row and close to the real digits'; a confident share
#   about seven points below theirs; every class near 10%, like real digits; precision and recall
#   near those of the training-set copies; and samples a little farther from their nearest
#   training image than new real digits are: no copying.

# %% [markdown]
# ## 4. The trained model in detail

# %%
print(format_table(scores["trained model"]))
hist = np.array(scores["trained model"]["class_histogram"])
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].bar(range(10), hist, color="tab:blue")
axes[0].axhline(0.1, color="black", linestyle="--", linewidth=1, label="uniform (10%)")
axes[0].set_xticks(range(10))
axes[0].set_xlabel("predicted digit")
axes[0].set_ylabel("share of samples")
axes[0].legend()
logits_s, _ = evaluator.predict(run_samples)
conf = np.asarray(jax.nn.softmax(jnp.asarray(logits_s), -1)).max(1)
logits_r, _ = evaluator.predict(test_m11[:N])
conf_r = np.asarray(jax.nn.softmax(jnp.asarray(logits_r), -1)).max(1)
axes[1].hist([conf_r, conf], bins=20, range=(0, 1), label=["real test digits", "trained model"])
axes[1].set_xlabel("classifier confidence")
axes[1].set_yscale("log")
axes[1].legend()
fig.tight_layout()
tutorial.show(fig, "class_histogram_and_confidence")

# %% [markdown]
# Left: how often the classifier assigns each digit to the model's samples; a good model stays
# close to the dashed 10% line for every digit. Right: the confidence distribution of the samples
# (orange) against real digits (blue), on a logarithmic count axis; the low-confidence tail is where the ambiguous or broken
# samples are.

# %%
order = np.argsort(conf)
worst, best = order[:10], order[-10:]
fig = plot_samples(np.concatenate([run_samples[best], run_samples[worst]]), ncols=10,
                   title="top row: most confident samples; bottom row: least confident")
tutorial.show(fig, "best_and_worst")

# %% [markdown]
# The least confident samples are the ones a person would also hesitate over: open or fragmented
# strokes, blots, and shapes between two classes (a 3 that could be an 8, a 6 or an 8 drawn as a loop). The most
# confident ones are clean, typical digits. Shapes like these are the samples below confidence 0.9
# (the table above), which keep the tutorial run from the real digits' confident share.
#
# ## 5. Memorisation check: nearest training neighbours

# %%
train_m11 = np.asarray(data.to_model_range(jnp.asarray(train_images)))
dist, idx = nearest_neighbours(run_samples[:10], train_m11)
fig = plot_samples(np.concatenate([run_samples[:10], train_m11[idx]]), ncols=10,
                   title="samples (top) and their nearest training images (bottom)")
tutorial.show(fig, "nearest_neighbours")
print("pixel distances:", np.round(dist, 2))

# %% [markdown]
# Each sample above its closest image among the first 20,000 training digits (the table's column
# searched all 60,000, so these distances can only be larger): similar digits, but not copies. Most distances are comparable to those of real test digits (8.4 on average), which
# the model never saw; the two 1s sit closest, because a plain stroke has near-twins among thousands of
# training 1s, not because they were copied. Copies would have distance 0.
#
# ## Summary
# - Use several figures together: FD and precision for quality, class shares and recall for
#   coverage, nearest-neighbour distance for memorisation.
# - FD compares the Gaussians of the classifier's features of samples and of the 10,000 test
#   digits; it depends on N, so compare it only at equal N.
# - `python scripts/evaluate.py <run folder>` prints the same table for any run; the docs' Results
#   page gives these figures for a full `cpu` run (`python scripts/train.py`) over several sampling
#   seeds.

# %% [markdown]
# ## Exercises
#
# Each runs in seconds; the solutions are in collapsed cells (click to expand).
#
# 1. Score the first 200, 1,000 and 5,000 real test digits. How does the Frechet distance change
#    with N, and why must two FDs be compared only at the same N?
# 2. Blur real digits once instead of twice (`blur(x, times=1)`): how much of the damage to FD and
#    confidence does the second pass do?
# 3. Which class does the trained model draw least often? Show ten of its samples of that class.

# %% jupyter={"source_hidden": true}
# Solution 1: FD has a positive bias that shrinks with N (the covariance of few samples is noisy),
# so even real digits score worse at small N. (At N = 5,000 the sample is also half of the
# 10,000-digit reference set, which pulls FD further down; at N = 10,000 it would be exactly 0.)
for n_real in (200, 1000, 5000):
    if n_real <= len(test_m11):
        print(f"N = {n_real:5d}: FD of real test digits {evaluator.evaluate(test_m11[:n_real])['frechet_distance']:.1f}")

# %% jupyter={"source_hidden": true}
# Solution 2: one pass against two.
for times in (1, 2):
    q = evaluator.evaluate(blur(test_m11[:N], times=times))
    print(f"blurred {times}x: FD {q['frechet_distance']:.1f}, confident {q['confident_share']:.1%}")

# %% jupyter={"source_hidden": true}
# Solution 3: the classifier's labels of the samples, then the rarest class.
predicted = np.argmax(evaluator.predict(run_samples)[0], axis=1)
rarest = int(np.argmin(np.bincount(predicted, minlength=10)))
print(f"rarest class: {rarest} ({np.mean(predicted == rarest):.1%} of the samples)")
fig = plot_samples(run_samples[predicted == rarest][:10], ncols=10, title=f"samples classified as {rarest}")
tutorial.show(fig, "exercise_rarest_class")
