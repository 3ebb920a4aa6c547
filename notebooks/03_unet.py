# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The UNet, piece by piece
#
# > **Run record:** the outputs below are from a real run at preset `cpu` on cpu x1 (AMD EPYC, 2 cores), commit 47423ea; the notebook took 33 s (`python tools/run_notebooks.py`). `TUTORIAL_PRESET=tiny` runs it in seconds.

# %% [markdown]
# The network's job is to look at a noisy image $x_t$ and the timestep $t$ and predict the noise
# $\varepsilon$ that was added. Input and output have the same shape, so the classic choice is a
# **UNet** ([Ronneberger et al. 2015](https://arxiv.org/abs/1505.04597)): it shrinks the image to see the whole digit, then grows it back, with skip connections
# that carry fine detail across. This notebook builds the one in `helpers/unet.py` from its parts:
# the time embedding, the residual block, self-attention, and the skips, then traces the shapes
# through the whole network and counts parameters for each preset.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import helpers  # noqa: F401
import tutorial  # notebooks/tutorial/: what the notebooks share
from helpers.config import PRESETS, get_config
from helpers.unet import (ResBlock, SelfAttention, UNetConfig, count_params, create_unet, sinusoidal_embedding,
                          space_to_depth)

PRESET = tutorial.setup("03_unet")

# %% [markdown]
# ## 1. Telling the network what time it is
#
# One network serves all 1,000 noise levels, so it must know $t$. The integer is turned into a
# vector of sines and cosines at geometrically spaced frequencies (the Transformer position
# encoding of [Vaswani et al. 2017](https://arxiv.org/abs/1706.03762); [Ho et al.
# 2020](https://arxiv.org/abs/2006.11239) use the same), then through a small MLP. Nearby timesteps get similar
# vectors, far-apart ones different vectors.

# %%
t = jnp.arange(0, 1000)
emb = sinusoidal_embedding(t, 128)
fig, ax = plt.subplots(figsize=(9, 3.2))
im = ax.imshow(np.asarray(emb).T, aspect="auto", cmap="RdBu", interpolation="nearest")
ax.set_xlabel("timestep t")
ax.set_ylabel("embedding dimension")
ax.set_title("sinusoidal time embedding (128 dimensions)")
fig.colorbar(im, ax=ax)
fig.tight_layout()
tutorial.show(fig, "time_embedding")

# %% [markdown]
# The embedding has two halves: rows 0-63 are sines and rows 64-127 cosines of the same 64
# frequencies, hence the two similar bands. In each band the top rows oscillate fast and tell
# neighbouring timesteps apart; the rows lower down change slowly and say roughly where in the
# process we are. The slowest barely move over 1,000 steps: sines stay near 0 (white), cosines
# near 1 (blue).

# %% [markdown]
# ## 2. The residual block
#
# Each `ResBlock` is GroupNorm -> activation -> 3x3 conv, then adds a projection of the time
# embedding to every pixel (this is how $t$ reaches every layer), then GroupNorm -> activation ->
# dropout -> 3x3 conv, and finally adds its input back (a 1x1 conv matches the channels when they
# change). The residual path gives the signal and its gradient a direct route through every
# block, which keeps deep networks trainable. The normalisation is Flax's own `nnx.GroupNorm`
# ([Wu & He 2018](https://arxiv.org/abs/1803.08494)).

# %%
cfg = UNetConfig(hidden_dims=(64, 128, 256), num_res_blocks=2, attention_resolutions=(8,))
block = ResBlock(64, 128, emb_dim=128, cfg=cfg, rngs=nnx.Rngs(0))
h = jnp.ones((2, 16, 16, 64))
print("ResBlock 64 -> 128 channels:", h.shape, "->", block(h, jnp.ones((2, 128))).shape,
      f"({count_params(block):,} parameters)")

# %% [markdown]
# ## 3. Self-attention at low resolution
#
# Convolutions see a 3x3 neighbourhood; to relate the top of a "7" to its foot, the network needs
# a global view. Self-attention lets every position look at every other one. It costs
# (positions)^2, so the reference tutorial uses it only at 8x8 (64 positions), not at 32x32
# (1,024 positions, 256x the cost).

# %%
attn = SelfAttention(256, cfg, rngs=nnx.Rngs(0))
h = jax.random.normal(jax.random.key(0), (2, 8, 8, 256))
print("SelfAttention at 8x8:", h.shape, "->", attn(h).shape, f"({count_params(attn):,} parameters)")

# %% [markdown]
# ## 4. The whole network: a shape trace
#
# Down the left side of the U, each level has `num_res_blocks` residual blocks (attention after
# each at 8x8) and, except at the lowest level, a strided conv that halves the size. The middle
# has two blocks with attention between them. Up the right side, each block first concatenates the matching skip from the way
# down, which is why its input has more channels than its output. The trace below follows a batch
# of two through the model of the reference tutorial (Artifex's ["Training a Diffusion Model on
# MNIST"](https://docs.avitai.bio/artifex/examples/basic/diffusion-mnist), which this collection re-creates; the `paper` preset).

# %%
def shape_trace(abstract_model, batch_size=2):
    """(layer, output shape) along one forward pass, in the order of `UNet.__call__`; shapes only."""
    graphdef, state = nnx.split(abstract_model)
    rows = []

    def forward(state, x, t):
        model = nnx.merge(graphdef, state)
        emb = model.embed(t, None, batch_size)
        if model.cfg.patch_size > 1:
            rows.append((f"space-to-depth ({model.cfg.patch_size}x{model.cfg.patch_size} patches)",
                         space_to_depth(x, model.cfg.patch_size).shape))
        h = model.conv_in(space_to_depth(x, model.cfg.patch_size))
        rows.append(("conv_in", h.shape))
        skips = [h]
        for layer in model.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            rows.append((f"down {'Conv, stride 2' if isinstance(layer, nnx.Conv) else type(layer).__name__}", h.shape))
            if isinstance(layer, SelfAttention):
                skips[-1] = h  # attention refines the block output that becomes the skip
            else:
                skips.append(h)
        has_attention = model.mid_attn is not None
        h = model.mid2(model.mid_attn(model.mid1(h, emb)) if has_attention else model.mid1(h, emb), emb)
        rows.append((f"middle (ResBlock, {'attention, ' if has_attention else ''}ResBlock)", h.shape))
        for layer in model.up:
            if isinstance(layer, ResBlock):
                skip = skips.pop()
                h = layer(jnp.concatenate([h, skip], axis=-1), emb)
                rows.append((f"up ResBlock (+ skip with {skip.shape[-1]} channels)", h.shape))
            else:
                h = layer(h)
                rows.append((f"up {type(layer).__name__}", h.shape))
        rows.append(("output" + (" (depth-to-space)" if model.cfg.patch_size > 1 else ""), model(x, t).shape))

    x = jax.ShapeDtypeStruct((batch_size, 32, 32, 1), jnp.float32)
    jax.eval_shape(forward, state, x, jax.ShapeDtypeStruct((batch_size,), jnp.int32))
    return rows


# nnx.eval_shape builds the model abstractly (shapes, no weights): instant even for 15M parameters.
paper = nnx.eval_shape(lambda: create_unet(PRESETS["paper"].model, seed=0))
for name, shape in shape_trace(paper):
    print(f"{name:48s} {shape}")

# %% [markdown]
# 32x32 goes down to 8x8 and back; the channels grow from 64 to 256 as the image shrinks, so each
# level does a similar amount of work. The output has exactly the input's shape: one predicted
# value per pixel (the noise $\varepsilon$ for this preset; the `cpu` preset predicts a mix of noise
# and image called $v$, which notebook 04 introduces). The final conv is **initialised to zero**, so
# an untrained model predicts zeros, and training starts from a calm, known loss: that of predicting
# 0, set by the size of the target (notebook 04 prints its first steps' losses).
#
# The same structure as a picture, for the `cpu` preset's model (left: down, right: up, dashed:
# the skips; each box is one resolution level, with its feature-map size and channels):

# %%
def draw_unet(c: UNetConfig):
    """A box per level of the U (down left, up right), the middle at the bottom, skips dashed."""
    levels = list(zip(c.resolutions, c.channels))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 1.1 * len(levels)))
    for i, (res, ch) in enumerate(levels):
        attn = " + attention" if res in c.attention_resolutions else ""
        for x, side, blocks in ((0.0, "down", c.num_res_blocks), (6.0, "up", c.num_res_blocks + 1)):
            ax.add_patch(plt.Rectangle((x, -i - 0.35), 3, 0.7, fc="#dbe4f7" if side == "down" else "#f7e3d3", ec="k"))
            ax.text(x + 1.5, -i, f"{res}x{res}, {ch} channels\n{blocks} ResBlock{'s' * (blocks > 1)}{attn}",
                    ha="center", va="center", fontsize=8)
        ax.annotate("", (6.0, -i), (3.0, -i), arrowprops=dict(arrowstyle="->", ls="--", color="gray"))
        if i + 1 < len(levels):
            ax.annotate("", (1.5, -i - 0.65), (1.5, -i - 0.35), arrowprops=dict(arrowstyle="->"))
            ax.annotate("", (7.5, -i - 0.35), (7.5, -i - 0.65), arrowprops=dict(arrowstyle="->"))
    bottom = len(levels)
    ax.add_patch(plt.Rectangle((3.0, -bottom - 0.35), 3, 0.7, fc="#e3f0d8", ec="k"))
    middle = "ResBlock, attention, ResBlock" if levels[-1][0] in c.attention_resolutions else "ResBlock, ResBlock"
    ax.text(4.5, -bottom, f"middle: {middle}\n{levels[-1][0]}x{levels[-1][0]}, "
            f"{levels[-1][1]} channels", ha="center", va="center", fontsize=8)
    ax.annotate("", (3.0, -bottom), (1.5, -bottom + 0.65), arrowprops=dict(arrowstyle="->"))
    ax.annotate("", (7.5, -bottom + 0.65), (6.0, -bottom), arrowprops=dict(arrowstyle="->"))
    patch = f", {c.patch_size}x{c.patch_size} patches" if c.patch_size > 1 else ""
    ax.text(1.5, 0.75, f"x_t (32x32x1{patch}) + t", ha="center", fontsize=9)
    ax.text(7.5, 0.75, "prediction (32x32x1)", ha="center", fontsize=9)
    ax.set(xlim=(-0.5, 9.5), ylim=(-bottom - 0.8, 1.1))
    ax.axis("off")
    fig.tight_layout()
    return fig


tutorial.show(draw_unet(PRESETS["cpu"].model), "unet_diagram")

# %% [markdown]
# Each level halves the feature map and doubles the channels on the way down; the up side mirrors
# it, each level with one block more, because it also consumes the skip of the layer that entered
# that level (the strided conv, or `conv_in` at the top).
# The `cpu` model's real shape trace, with its 2x2 patches folded into channels first:

# %%
cpu_model = nnx.eval_shape(lambda: create_unet(PRESETS["cpu"].model, seed=0))
for name, shape in shape_trace(cpu_model):
    print(f"{name:48s} {shape}")

# %% [markdown]
# The trace starts with space-to-depth: 32x32x1 becomes 16x16x4, so the three levels work at
# 16x16, 8x8 and 4x4, and the last layer unfolds the 4 channels back into 32x32x1.
#
# ## 5. Parameter counts per preset
#
# The `cpu` preset needs a model that learns in 20 minutes on two cores. It first folds each 2x2
# patch of pixels into channels (**space-to-depth**), as the trace above shows, so its
# convolutions run on a quarter of the positions: about 4x cheaper per image. Vision Transformers
# ([Dosovitskiy et al. 2021](https://arxiv.org/abs/2010.11929)) and latent diffusion models
# ([Rombach et al. 2022](https://arxiv.org/abs/2112.10752)) make the same trade. It is also narrow
# (16/32/64 channels), so each training step is cheap. Whether narrower is better at a fixed budget
# is an experiment: notebook 09 trains a narrower and a wider UNet than this one for the same few
# minutes, prints the images per second of each, and compares their samples.

# %%
rows = []
for name in PRESETS:
    c = get_config(name)
    m = nnx.eval_shape(lambda: create_unet(c.model, seed=0))
    rows.append((name, c.model.channels, c.model.num_res_blocks, c.model.patch_size,
                 c.model.resolutions, c.model.attention_resolutions, count_params(m)))
print(f"{'preset':7s} {'channels':>16s} {'blocks':>6s} {'patch':>5s} {'feature maps':>14s} {'attention':>9s} {'parameters':>12s}")
for name, ch, nb, p, res, att, n in rows:
    print(f"{name:7s} {str(ch):>16s} {nb:>6d} {p:>5d} {str(res):>14s} {str(att):>9s} {n:>12,}")

# %% [markdown]
# The `paper` model has about 15.3 million parameters (the reference tutorial's UNet); `cpu` has
# about 0.7 million and `tiny` about 43 thousand, for tests.

# %%
model = create_unet(get_config(PRESET).model, seed=0)
x = jax.random.normal(jax.random.key(1), (4, 32, 32, 1))
out = model(x, jnp.array([0, 250, 500, 999]))
print(f"{PRESET} model: {x.shape} -> {out.shape}; untrained output is all zeros: {bool(jnp.all(out == 0))}")

# %% [markdown]
# ## Summary
# - Time enters every residual block through a sinusoidal embedding and an MLP.
# - Attention only at low resolution, where it is cheap; skips carry detail across the U.
# - `UNetConfig` holds every choice (channels, blocks, attention, activation, dropout, time
#   embedding, patch size); notebook 09 compares a narrower (8/16/32) and a wider (32/64/128) UNet
#   with this one at equal compute.

# %% [markdown]
# ## Exercises
#
# Each runs in seconds; the solutions are in collapsed cells (click to expand).
#
# 1. How many parameters would the `cpu` model have with two residual blocks per level, and with
#    4x4 patches? Which of the two changes the parameter count more, and why?
# 2. Trace the `cpu` model's shapes with `patch_size=4`. At what feature-map sizes does it work,
#    and where would its attention (at 4x4) now sit?
# 3. Self-attention over $n$ positions compares every pair: how many pairs at 4x4, 8x8, 16x16
#    and 32x32?

# %% jupyter={"source_hidden": true}
# Solution 1: a second block per level adds convolutions, so many parameters. A conv's parameters do
# not depend on the feature-map size, so bigger patches change only the layers that move: the first
# and last convs, and the attention, which now sits at a narrower level (solution 2).
for change in ({}, {"num_res_blocks": 2}, {"patch_size": 4}):
    c = get_config("cpu", **change)
    print(f"cpu {change or '(as it is)'}: {count_params(nnx.eval_shape(lambda: create_unet(c.model, seed=0))):,} parameters")

# %% jupyter={"source_hidden": true}
# Solution 2: 32x32 folded into 8x8x16, levels at 8x8, 4x4 and 2x2; attention at 4x4 now sits at the
# second level (32 channels), no longer at the bottom of the U: the middle block has no attention.
for name, shape in shape_trace(nnx.eval_shape(lambda: create_unet(get_config("cpu", patch_size=4).model, seed=0))):
    print(f"{name:48s} {shape}")

# %% jupyter={"source_hidden": true}
# Solution 3: (positions)^2 pairs, so each doubling of the side costs 16x.
for side in (4, 8, 16, 32):
    print(f"{side}x{side}: {side * side:5d} positions, {(side * side) ** 2:>9,} pairs")
