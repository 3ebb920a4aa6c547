"""A Flax NNX UNet for 32 x 32 images, NHWC (Ho et al. 2020, appendix B; Ronneberger et al. 2015).

Every field of `UNetConfig` changes the network it builds (tests prove it):

    x (B,32,32,1) -conv-> 32x32 -[ResBlock x n (+Attn)]-> down -> 16x16 -[...]-> down -> 8x8 -[...]
        -> middle: ResBlock (+Attn) ResBlock at the lowest resolution
        -> up path: ResBlock x (n+1) on [h, skip] (+Attn), upsample, ... -> GroupNorm, act, conv -> (B,32,32,1)

Levels are `hidden_dims` (or `hidden_dims[0] * channel_mult`); a network with L levels downsamples
L - 1 times, so three levels reach 8 x 8 (32 -> 16 -> 8). The reference tutorial's "32 -> 16 -> 8 -> 4"
would need four levels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}


@dataclass(frozen=True)
class UNetConfig:
    """The reference tutorial's `UNetBackboneConfig` fields, each of which really shapes the model."""

    hidden_dims: tuple[int, ...] = (64, 128, 256)  # channels per resolution level
    channel_mult: tuple[int, ...] | None = None  # if set: channels = hidden_dims[0] * channel_mult
    num_res_blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention_resolutions: tuple[int, ...] = (8,)  # self-attention at these feature-map sizes
    activation: str = "gelu"
    dropout_rate: float = 0.0
    time_embedding_dim: int = 128  # sinusoidal embedding and time-MLP width
    in_channels: int = 1
    out_channels: int = 1
    image_size: int = 32
    num_heads: int = 4  # attention heads (1 when the width is not divisible)
    max_norm_groups: int = 32  # GroupNorm uses the largest divisor of the width up to this
    num_classes: int | None = None  # class-conditional model; label `num_classes` means "no label"
    patch_size: int = 1  # >1: space-to-depth first (32x32x1 -> 16x16x4 for 2), depth-to-space at the end
    dtype: str = "float32"  # "bfloat16": convolutions, linear layers and attention compute in bf16
    # (mixed precision: parameters, GroupNorm, the loss and the optimiser stay float32)

    @property
    def compute_dtype(self):
        """The dtype convolutions, linear layers and attention compute in."""
        return jnp.dtype(self.dtype)

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels per level: `hidden_dims`, or `hidden_dims[0] * channel_mult`."""
        if self.channel_mult is None:
            return tuple(self.hidden_dims)
        return tuple(self.hidden_dims[0] * m for m in self.channel_mult)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level: 32, 16, 8 for three levels (16, 8, 4 with patch_size 2)."""
        return tuple(self.image_size // self.patch_size // 2**i for i in range(len(self.channels)))

    def validate(self) -> "UNetConfig":
        """Raise ValueError with what to change when the network cannot be built as asked."""
        if not self.hidden_dims or any(int(c) <= 0 for c in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive channel counts, got {self.hidden_dims}.")
        if self.channel_mult is not None:
            if not self.channel_mult or any(int(m) <= 0 for m in self.channel_mult):
                raise ValueError(f"channel_mult must be positive integers, got {self.channel_mult}.")
            if len(self.hidden_dims) > 1 and tuple(self.hidden_dims) != self.channels:
                raise ValueError(
                    f"hidden_dims {self.hidden_dims} and channel_mult {self.channel_mult} disagree "
                    f"(hidden_dims[0] * channel_mult = {self.channels}): give one of them, or make them agree.")
        for name in ("num_res_blocks", "time_embedding_dim", "in_channels", "out_channels",
                     "image_size", "num_heads", "max_norm_groups", "patch_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {self.activation!r}: choose one of {', '.join(ACTIVATIONS)}.")
        if self.time_embedding_dim % 2:
            raise ValueError(f"time_embedding_dim must be even (sin and cos halves), got {self.time_embedding_dim}.")
        downs = len(self.channels) - 1
        if self.image_size % (self.patch_size * 2**downs):
            raise ValueError(
                f"image_size {self.image_size} cannot be halved {downs} times cleanly for "
                f"{len(self.channels)} levels (patch_size {self.patch_size}): use a size divisible by "
                f"{self.patch_size * 2**downs} (MNIST is padded to 32) or fewer levels.")
        bad = sorted(set(self.attention_resolutions) - set(self.resolutions))
        if bad:
            raise ValueError(
                f"attention_resolutions {tuple(bad)} are never reached: this UNet's feature maps are "
                f"{self.resolutions}. Choose among those (or () for no attention).")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}.")
        if self.num_classes is not None and int(self.num_classes) <= 0:
            raise ValueError(f"num_classes must be positive or None, got {self.num_classes}.")
        return self

    def replace(self, **changes) -> "UNetConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Transformer position encoding of the timestep (Vaswani et al. 2017; Ho et al. 2020). (B,) -> (B, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, eps: float) -> jax.Array:
    """Group normalisation (Wu & He 2018, eqs. 1-2) of an NHWC array, statistics in float32.

    The statistics come from per-channel sums over the spatial axes, sum(x) and sum(x^2) -> (N, C),
    which are then added up within each group: var = E[x^2] - E[x]^2 (clamped at 0, as Flax's
    `use_fast_variance`). The output is one multiply-add per element, x * a + b with a, b of shape
    (N, C). Its gradient is then two reductions and one elementwise pass, where differentiating
    through a (..., groups, channels / group) reshape costs about twice as much on a CPU.
    """
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    x = x.astype(dtype)
    n, c = x.shape[0], x.shape[-1]
    spatial = tuple(range(1, x.ndim - 1))
    group_size = c // num_groups
    count = math.prod(x.shape[1:-1]) * group_size  # elements per (image, group)

    def group_mean(per_channel_sum):  # (N, C) -> (N, groups) -> repeated back to (N, C)
        per_group = per_channel_sum.reshape(n, num_groups, group_size).sum(-1) / count
        return jnp.repeat(per_group, group_size, axis=1)

    mean = group_mean(jnp.sum(x, axis=spatial))
    var = jnp.maximum(group_mean(jnp.sum(x * x, axis=spatial)) - mean * mean, 0.0)
    a = scale * jax.lax.rsqrt(var + eps)  # (N, C)
    b = bias - mean * a
    per_image = (n,) + (1,) * len(spatial) + (c,)
    return x * a.reshape(per_image) + b.reshape(per_image)


class GroupNorm(nnx.GroupNorm):
    """`nnx.GroupNorm` (same parameters and checkpoints) computed by `group_norm` for speed.

    `norm(x, act)` is `act(norm(x))`, with the two recomputed from `x` in the backward pass instead of
    stored (`jax.checkpoint`): the forward pass then writes only the activation's output, which the
    next convolution needs anyway, and the small UNet's train step runs 5-10% faster on a CPU (docs:
    Performance).
    """

    def __call__(self, x: jax.Array, act: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
        if act is None:
            return group_norm(x, self.scale[...], self.bias[...], self.num_groups, self.epsilon)
        norm_act = jax.checkpoint(lambda x, scale, bias: act(group_norm(x, scale, bias, self.num_groups,
                                                                        self.epsilon)))
        return norm_act(x, self.scale[...], self.bias[...])


def _groups(channels: int, max_groups: int) -> int:
    return max(g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0)


class ResBlock(nnx.Module):
    """GroupNorm -> act -> conv, + time embedding, GroupNorm -> act -> dropout -> conv, + skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[cfg.activation]
        self.norm1 = GroupNorm(c_in, num_groups=_groups(c_in, cfg.max_norm_groups), rngs=rngs)
        dt = cfg.compute_dtype
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), padding="SAME", dtype=dt, rngs=rngs)
        self.emb_proj = nnx.Linear(emb_dim, c_out, dtype=dt, rngs=rngs)
        self.norm2 = GroupNorm(c_out, num_groups=_groups(c_out, cfg.max_norm_groups), rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), padding="SAME", dtype=dt, rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1, 1), dtype=dt, rngs=rngs) if c_in != c_out else None

    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = self.conv1(self.norm1(x, self.act))  # GroupNorm, then the activation
        h = h + self.emb_proj(self.act(emb))[:, None, None, :]
        h = self.conv2(self.dropout(self.norm2(h, self.act)))
        return h + (self.skip(x) if self.skip is not None else x)


class SelfAttention(nnx.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual."""

    def __init__(self, channels: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
        heads = cfg.num_heads if channels % cfg.num_heads == 0 else 1
        self.norm = GroupNorm(channels, num_groups=_groups(channels, cfg.max_norm_groups), rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, channels, decode=False, dtype=cfg.compute_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        tokens = self.norm(x).reshape(b, h * w, c)
        return x + self.attn(tokens).reshape(b, h, w, c)


class Downsample(nnx.Module):
    """3x3 convolution with stride 2: H x W -> H/2 x W/2."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.conv = nnx.Conv(channels, channels, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2 then a 3x3 convolution: H x W -> 2H x 2W."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.conv = nnx.Conv(channels, channels, (3, 3), padding="SAME", dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class UNet(nnx.Module):
    """Noise-prediction UNet: `model(x_t, t)` or, when conditional, `model(x_t, t, labels)`."""

    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        chans, res = cfg.channels, cfg.resolutions
        emb = cfg.time_embedding_dim
        self.act = ACTIVATIONS[cfg.activation]
        self.time_mlp1 = nnx.Linear(cfg.time_embedding_dim, emb, rngs=rngs)
        self.time_mlp2 = nnx.Linear(emb, emb, rngs=rngs)
        self.label_emb = (nnx.Embed(cfg.num_classes + 1, emb, rngs=rngs)
                          if cfg.num_classes is not None else None)
        p2 = cfg.patch_size**2
        self.conv_in = nnx.Conv(cfg.in_channels * p2, chans[0], (3, 3), padding="SAME", dtype=cfg.compute_dtype,
                                rngs=rngs)

        down, skip_chans, c = [], [chans[0]], chans[0]
        for i, (c_out, r) in enumerate(zip(chans, res)):
            for _ in range(cfg.num_res_blocks):
                down.append(ResBlock(c, c_out, emb, cfg, rngs=rngs))
                c = c_out
                if r in cfg.attention_resolutions:
                    down.append(SelfAttention(c, cfg, rngs=rngs))
                skip_chans.append(c)
            if i < len(chans) - 1:
                down.append(Downsample(c, rngs=rngs, dtype=cfg.compute_dtype))
                skip_chans.append(c)
        self.down = nnx.List(down) if hasattr(nnx, "List") else down

        self.mid1 = ResBlock(c, c, emb, cfg, rngs=rngs)
        self.mid_attn = SelfAttention(c, cfg, rngs=rngs) if res[-1] in cfg.attention_resolutions else None
        self.mid2 = ResBlock(c, c, emb, cfg, rngs=rngs)

        up = []
        for i in reversed(range(len(chans))):
            for _ in range(cfg.num_res_blocks + 1):
                up.append(ResBlock(c + skip_chans.pop(), chans[i], emb, cfg, rngs=rngs))
                c = chans[i]
                if res[i] in cfg.attention_resolutions:
                    up.append(SelfAttention(c, cfg, rngs=rngs))
            if i > 0:
                up.append(Upsample(c, rngs=rngs, dtype=cfg.compute_dtype))
        self.up = nnx.List(up) if hasattr(nnx, "List") else up

        self.norm_out = GroupNorm(c, num_groups=_groups(c, cfg.max_norm_groups), rngs=rngs)
        # Zero-initialised output: the untrained model predicts 0, and training starts from a calm loss.
        self.conv_out = nnx.Conv(c, cfg.out_channels * p2, (3, 3), padding="SAME",
                                 kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None,
                 trace: list | None = None) -> jax.Array:
        """`trace`, if given, collects (layer name, output shape) along the way (see `shape_trace`)."""
        note = (lambda name, a: trace.append((name, tuple(a.shape)))) if trace is not None else (lambda *_: None)
        t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
        emb = self.time_mlp2(self.act(self.time_mlp1(sinusoidal_embedding(t, self.cfg.time_embedding_dim))))
        if self.label_emb is not None:
            if labels is None:  # unconditional call of a conditional model: the "no label" class
                labels = jnp.full((x.shape[0],), self.cfg.num_classes, jnp.int32)
            emb = emb + self.label_emb(labels)

        note("input", x)
        note("time embedding", emb)
        h = self.conv_in(space_to_depth(x, self.cfg.patch_size))
        note("conv_in" + (f" (after {self.cfg.patch_size}x{self.cfg.patch_size} space-to-depth)"
                          if self.cfg.patch_size > 1 else ""), h)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            note(f"down {type(layer).__name__}", h)
            if not isinstance(layer, SelfAttention):
                skips.append(h)
            else:
                skips[-1] = h  # attention refines the block output that becomes the skip
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h, emb)
        note("middle (ResBlock" + (", attention" if self.mid_attn is not None else "") + ", ResBlock)", h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                skip = skips.pop()
                h = layer(jnp.concatenate([h, skip], axis=-1), emb)
                note(f"up ResBlock (+ skip with {skip.shape[-1]} channels)", h)
            else:
                h = layer(h)
                note(f"up {type(layer).__name__}", h)
        out = depth_to_space(self.conv_out(self.norm_out(h, self.act)), self.cfg.patch_size).astype(jnp.float32)
        note("output", out)
        return out


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/p, W/p, C p^2): each p x p patch becomes one position with p^2 channels."""
    if p == 1:
        return x
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
    """The inverse of `space_to_depth`."""
    if p == 1:
        return x
    b, h, w, cp = x.shape
    c = cp // (p * p)
    x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, c)


def shape_trace(model: "UNet", batch_size: int = 2) -> list[tuple[str, tuple]]:
    """(layer, output shape) for one forward pass, in order. Shapes only (`jax.eval_shape`), so it
    also works on an abstract model from `nnx.eval_shape(lambda: create_unet(cfg))`."""
    cfg = model.cfg
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((batch_size, cfg.image_size, cfg.image_size, cfg.in_channels), jnp.float32)
    trace: list = []
    jax.eval_shape(lambda state, x: nnx.merge(graphdef, state)(x, jnp.zeros((batch_size,), jnp.int32), trace=trace),
                   state, x)
    return trace


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (nnx.Param leaves)."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def create_unet(cfg: UNetConfig, seed: int = 0, verbose: bool = False) -> UNet:
    """Build a UNet with its own PRNG streams; print the parameter count when verbose."""
    model = UNet(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    if verbose:
        print(f"UNet {cfg.channels} x {cfg.num_res_blocks} blocks, attention at {cfg.attention_resolutions}: "
              f"{count_params(model):,} parameters")
    return model
