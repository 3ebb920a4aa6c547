"""A Flax NNX UNet for 32 x 32 images, NHWC (Ho et al. 2020, appendix B; Ronneberger et al. 2015).

    x (B,32,32,1) -conv-> 32x32 -[ResBlock x n (+Attn)]-> down -> 16x16 -[...]-> down -> 8x8 -[...]
        -> middle: ResBlock (+Attn) ResBlock at the lowest resolution
        -> up path: ResBlock x (n+1) on [h, skip] (+Attn), upsample, ... -> GroupNorm, act, conv -> (B,32,32,1)"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {"gelu": jax.nn.gelu, "silu": jax.nn.silu, "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True)
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
    dtype: str = "float32"  # "bfloat16": mixed precision (parameters, GroupNorm and the loss stay float32)

    @property
    def channels(self) -> tuple[int, ...]:  # per level: hidden_dims, or hidden_dims[0] * channel_mult
        mult = self.channel_mult
        return tuple(self.hidden_dims) if mult is None else tuple(self.hidden_dims[0] * m for m in mult)

    @property
    def resolutions(self) -> tuple[int, ...]:  # feature-map sizes: 32, 16, 8 (16, 8, 4 on 2x2 patches)
        return tuple(self.image_size // self.patch_size // 2**i for i in range(len(self.channels)))

    def validate(self) -> "UNetConfig":
        """Raise ValueError with what to change when the network cannot be built as asked."""
        for name in ("num_res_blocks", "time_embedding_dim", "in_channels", "out_channels", "image_size", "num_heads",
                     "max_norm_groups", "patch_size", "num_classes", "hidden_dims", "channel_mult"):
            value = getattr(self, name)
            if value is not None and min(value if isinstance(value, tuple) else (value,), default=0) <= 0:
                raise ValueError(f"{name} must be positive, got {value}.")
        if self.channel_mult is not None and len(self.hidden_dims) > 1 and tuple(self.hidden_dims) != self.channels:
            raise ValueError(f"hidden_dims {self.hidden_dims} and channel_mult {self.channel_mult} disagree: "
                             f"give one of them, or make them agree.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}.")
        if self.activation not in ACTIVATIONS or self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"Unknown activation {self.activation!r} or dtype {self.dtype!r}: choose an activation "
                             f"of {', '.join(ACTIVATIONS)} and float32 or bfloat16.")
        if self.time_embedding_dim % 2:
            raise ValueError(f"time_embedding_dim must be even (sin and cos halves), got {self.time_embedding_dim}.")
        if self.image_size % (self.patch_size * 2 ** (len(self.channels) - 1)):
            raise ValueError(f"image_size {self.image_size} cannot be halved cleanly for {len(self.channels)} "
                             f"levels with patch_size {self.patch_size}: use fewer levels.")
        if not set(self.attention_resolutions) <= set(self.resolutions):
            raise ValueError(f"attention_resolutions {self.attention_resolutions}: some are never reached, this "
                             f"UNet's feature maps are {self.resolutions}. Choose among those (or ()).")
        return self

    def replace(self, **changes) -> "UNetConfig":
        return dataclasses.replace(self, **changes)


# Transformer position encoding of the timestep (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020).
def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """(B,) timesteps -> (B, dim): sines then cosines at geometrically spaced frequencies."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def group_norm(channels: int, cfg: UNetConfig, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm (Wu & He 2018) with the largest number of groups up to `max_norm_groups` that divides."""
    groups = max(g for g in range(1, min(channels, cfg.max_norm_groups) + 1) if channels % g == 0)
    return nnx.GroupNorm(channels, num_groups=groups, rngs=rngs)


class ResBlock(nnx.Module):
    """GroupNorm -> act -> conv, + time embedding, GroupNorm -> act -> dropout -> conv, + skip."""
    def __init__(self, c_in: int, c_out: int, emb_dim: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.act = ACTIVATIONS[cfg.activation]
        self.norm1 = group_norm(c_in, cfg, rngs)
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), padding="SAME", dtype=dtype, rngs=rngs)
        self.emb_proj = nnx.Linear(emb_dim, c_out, dtype=dtype, rngs=rngs)
        self.norm2 = group_norm(c_out, cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), padding="SAME", dtype=dtype, rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1, 1), dtype=dtype, rngs=rngs) if c_in != c_out else None

    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb_proj(self.act(emb))[:, None, None, :]  # the timestep reaches every pixel
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return h + (self.skip(x) if self.skip is not None else x)


class SelfAttention(nnx.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual."""
    def __init__(self, channels: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
        heads = cfg.num_heads if channels % cfg.num_heads == 0 else 1
        self.norm = group_norm(channels, cfg, rngs)
        self.attn = nnx.MultiHeadAttention(heads, channels, decode=False, dtype=jnp.dtype(cfg.dtype), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        tokens = self.norm(x).reshape(b, h * w, c)
        return x + self.attn(tokens).reshape(b, h, w, c)


class Upsample(nnx.Module):
    """Nearest-neighbour x2 then a 3x3 convolution: H x W -> 2H x 2W."""
    def __init__(self, channels: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(channels, channels, (3, 3), padding="SAME", dtype=jnp.dtype(cfg.dtype), rngs=rngs)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class UNet(nnx.Module):
    """Denoising UNet: `model(x_t, t)` or, when conditional, `model(x_t, t, labels)`."""
    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg.validate()
        chans, res, emb, dtype = cfg.channels, cfg.resolutions, cfg.time_embedding_dim, jnp.dtype(cfg.dtype)
        self.act = ACTIVATIONS[cfg.activation]
        self.time_mlp1 = nnx.Linear(emb, emb, rngs=rngs)
        self.time_mlp2 = nnx.Linear(emb, emb, rngs=rngs)
        self.label_emb = nnx.Embed(cfg.num_classes + 1, emb, rngs=rngs) if cfg.num_classes else None
        patch_channels = cfg.patch_size**2
        self.conv_in = nnx.Conv(cfg.in_channels * patch_channels, chans[0], (3, 3), padding="SAME",
                                dtype=dtype, rngs=rngs)
        down, skip_chans, c = [], [chans[0]], chans[0]
        for i, (c_out, r) in enumerate(zip(chans, res)):
            for _ in range(cfg.num_res_blocks):
                down.append(ResBlock(c, c_out, emb, cfg, rngs=rngs))
                c = c_out
                if r in cfg.attention_resolutions:
                    down.append(SelfAttention(c, cfg, rngs=rngs))
                skip_chans.append(c)
            if i < len(chans) - 1:  # downsample: H x W -> H/2 x W/2
                down.append(nnx.Conv(c, c, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype, rngs=rngs))
                skip_chans.append(c)
        self.down = nnx.List(down)
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
                up.append(Upsample(c, cfg, rngs=rngs))
        self.up = nnx.List(up)
        self.norm_out = group_norm(c, cfg, rngs)
        # Zero-initialised output: the untrained model predicts 0, and training starts from a calm loss.
        self.conv_out = nnx.Conv(c, cfg.out_channels * patch_channels, (3, 3), padding="SAME",
                                 kernel_init=nnx.initializers.zeros, rngs=rngs)

    def embed(self, t: jax.Array, labels: jax.Array | None, batch_size: int) -> jax.Array:
        """The time embedding (plus the label embedding of a conditional model), (B, emb)."""
        t = jnp.broadcast_to(jnp.asarray(t), (batch_size,))
        emb = self.time_mlp2(self.act(self.time_mlp1(sinusoidal_embedding(t, self.cfg.time_embedding_dim))))
        if self.label_emb is None:
            return emb
        if labels is None:  # an unconditional call of a conditional model: the "no label" class
            labels = jnp.full((batch_size,), self.cfg.num_classes, jnp.int32)
        return emb + self.label_emb(labels)

    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        emb = self.embed(t, labels, x.shape[0])
        h = self.conv_in(space_to_depth(x, self.cfg.patch_size))
        skips = [h]
        for layer in self.down:
            if isinstance(layer, SelfAttention):
                h = skips[-1] = layer(h)  # attention refines the block output that becomes the skip
            else:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
                skips.append(h)
        h = self.mid1(h, emb)
        h = self.mid2(h if self.mid_attn is None else self.mid_attn(h), emb)
        for layer in self.up:
            h = layer(jnp.concatenate([h, skips.pop()], axis=-1), emb) if isinstance(layer, ResBlock) else layer(h)
        return depth_to_space(self.conv_out(self.act(self.norm_out(h))), self.cfg.patch_size).astype(jnp.float32)


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/p, W/p, C p^2): each p x p patch becomes one position with p^2 channels."""
    b, h, w, c = x.shape
    return x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
    """The inverse of `space_to_depth`."""
    b, h, w, c = x.shape
    return x.reshape(b, h, w, p, p, c // (p * p)).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c // (p * p))


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (nnx.Param leaves)."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def create_unet(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A UNet with its own PRNG streams for parameters and dropout."""
    return UNet(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
