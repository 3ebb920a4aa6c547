"""Run configuration and presets: `paper` (the reference tutorial, for GPUs), `cpu` and `tiny`.

Every field can be overridden: `get_config("cpu", batch_size=128)`, or `--batch-size 128` (scripts/train.py
builds its flags from these fields). A `Config` is passive: it names choices and checks them, builds
nothing, and a run never changes it."""

import dataclasses
import json
import os

import jax

from helpers.data import DATASETS
from helpers.losses import FLOW_TIMES, LOSSES, NOISE_LEVELS, PREDICTIONS, WEIGHTINGS
from helpers.posthoc_ema import gamma_of
from helpers.schedules import check_schedule
from helpers.unet import UNetConfig

OBJECTIVES = ("ddpm", "flow")
#: `MNIST_DIFFUSION_QUICK=1` turns every run into a check that a preset's code paths work, in minutes on a
#: CPU: the preset's own settings with its UNet narrowed to 8 channels at the first level (the same levels,
#: blocks, attention and activation), batches and the run's own sample draw of at most 16 images, and at
#: most QUICK_STEPS training steps (helpers.training.make_plan) and QUICK_SAMPLE_STEPS sampler steps. Its
#: figures mean nothing. It narrows the configs `get_config` makes; a run resumed from its config.json keeps
#: the widths it was made with.
QUICK_VARIABLE, QUICK_STEPS, QUICK_IMAGES, QUICK_SAMPLE_STEPS = "MNIST_DIFFUSION_QUICK", 4, 16, 10
#: What `objective="flow"` implies unless given: the network predicts the velocity, every t weighs alike,
#: and an ODE solver samples (helpers.sampling).
FLOW_SETTINGS = {"prediction": "v", "loss_weighting": "uniform", "sampler": "heun"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run; `validate()` says what to change in a bad one."""
    dataset: str = "mnist"
    train_limit: int | None = None  # use only the first N training images (tiny runs)
    model: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    schedule: str = "cosine"
    num_timesteps: int = 1000
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02  # linear schedule only
    objective: str = "ddpm"  # or "flow": flow matching, the network predicts the velocity eps - x0
    flow_times: str = "logit_normal"  # flow only: how t in [0, 1] is drawn in training
    prediction: str = "epsilon"
    loss: str = "huber"
    huber_delta: float = 1.0
    loss_weighting: str = "uniform"
    noise_levels: str = "uniform"  # DDPM's timesteps in training: uniform, or EDM's log-normal sigma
    min_snr_gamma: float = 5.0
    label_dropout: float = 0.1  # class-conditional models only: P(label -> "no label") for CFG
    epochs: int = 50
    max_steps: int | None = None  # the run's number of steps, instead of epochs (the LR schedule spans them)
    minutes: float | None = None  # a time budget instead: one step is timed and the run planned once to fit it
    batch_size: int = 256
    learning_rate: float = 1e-4  # peak, reached at the end of warmup
    warmup_steps: int = 500
    end_lr_fraction: float = 0.01  # cosine decay ends at 1% of the peak
    weight_decay: float = 1e-5
    grad_clip: float = 1.0
    # EMA of the weights, used for sampling
    ema_decay: float = 0.9999
    ema_every: int = 10
    ema_warmup: bool = True  # decay_n = min(decay, (1 + n) / (10 + n)) after n updates
    # Post-hoc EMA (helpers.posthoc_ema): power-function EMAs of these lengths (sigma_rel) are tracked and
    # saved at every checkpoint step, so that any EMA length can be sampled after training; () for none
    # (the presets track 0.05 and 0.10, as Karras et al. 2024 do).
    ema_lengths: tuple[float, ...] = ()
    # sampling at the end of training
    sampler: str = "ddim"
    sample_steps: int = 100
    eta: float = 0.0
    num_samples: int = 64
    guidance_scale: float = 3.0  # class-conditional models only: CFG weight w (labels 0-9 in turn)
    # Autoguidance (Karras et al. 2024): the EMA weights at this fraction of the run's steps are kept
    # as a weak guide, and out = guide + w (model - guide) with w = autoguidance_scale (1: off).
    guide_fraction: float | None = None
    autoguidance_scale: float = 1.0
    # Guide only at timesteps t_low <= t <= t_high (Kynkaanniemi et al. 2024); elsewhere one network call.
    # (A flow-matching run's timestep is 1000 t, the time its network sees.)
    autoguidance_interval: tuple[int, int] | None = None
    seed: int = 42
    log_every: int = 25  # steps per chunk: the host reads the losses once per chunk
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    keep_checkpoints_every: int | None = None  # also keep each checkpoint whose step is a multiple of this
    preset: str = "custom"

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed; model fields may be given directly (`hidden_dims=...`)."""
        model_changes = {k: changes.pop(k) for k in list(changes) if k in UNetConfig.__dataclass_fields__}
        model = dataclasses.replace(changes.pop("model", self.model), **model_changes)
        return dataclasses.replace(self, model=model, **changes)

    def validate(self, num_train_examples: int | None = None) -> "Config":
        """Raise ValueError with what to change for any value that cannot work; returns the config."""
        for name, allowed in {"dataset": DATASETS, "prediction": PREDICTIONS, "loss": LOSSES, "loss_weighting": WEIGHTINGS,
                              "noise_levels": NOISE_LEVELS, "objective": OBJECTIVES, "flow_times": FLOW_TIMES}.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Unknown {name} {getattr(self, name)!r}: choose one of {', '.join(allowed)}.")
        for name in ("epochs", "batch_size", "learning_rate", "num_samples", "log_every", "checkpoint_every",
                     "keep_checkpoints", "keep_checkpoints_every", "ema_every", "huber_delta", "min_snr_gamma",
                     "max_steps", "minutes", "train_limit"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "guidance_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}.")
        if not 0.0 <= self.end_lr_fraction <= 1.0:
            raise ValueError(f"end_lr_fraction must be in [0, 1], got {self.end_lr_fraction}.")
        for name in ("ema_decay", "label_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        for length in self.ema_lengths:
            gamma_of(length)  # ValueError outside (0, 0.289)
        check_schedule(self.schedule, self.num_timesteps, self.beta_start, self.beta_end)
        _check_objective(self)
        _check_guide(self)
        self.model.validate()
        if num_train_examples is not None and self.batch_size > num_train_examples:
            raise ValueError(f"batch_size {self.batch_size} is larger than the {num_train_examples} training "
                             f"images: lower --batch-size (or raise --train-limit).")
        return self

    def to_json(self) -> str:  # what a run's config.json holds
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """The inverse of `to_json`'s dict; unknown fields are an error, not ignored (except the time-limit
        fields of older runs, whose max_steps already holds the steps they planned)."""
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
             if k not in ("time_limit_minutes", "fit_steps_to_time")}  # JSON lists: autoguidance_interval
        model = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("model", {}).items()}
        unknown = set(d) - set(cls.__dataclass_fields__) | set(model) - set(UNetConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown config fields {sorted(unknown)}.")
        return cls(model=UNetConfig(**model), **d)


def _check_objective(cfg: Config) -> None:
    """A flow-matching run predicts the velocity ("v") and weights every t alike. (Which samplers fit
    which objective: helpers.sampling.make_sampler.)"""
    fixes = [flag for flag, wrong in (("--prediction v", cfg.prediction != "v"),
                                      ("--loss-weighting uniform", cfg.loss_weighting != "uniform")) if wrong]
    if cfg.objective == "flow" and fixes:
        raise ValueError(f"A flow-matching run predicts the velocity eps - x0 and weights every t alike: "
                         f"use {' and '.join(fixes)} (or leave them out: --objective flow sets them).")


def _check_guide(cfg: Config) -> None:
    """The autoguidance settings: a guide taken inside the run, a scale of at least 1 that has a guide."""
    if cfg.guide_fraction is not None and not 0.0 < cfg.guide_fraction < 1.0:
        raise ValueError(f"guide_fraction must be in (0, 1) (the share of the run after which the guide "
                         f"is kept), got {cfg.guide_fraction}.")
    if cfg.autoguidance_scale < 1.0:
        raise ValueError(f"autoguidance_scale must be at least 1 (1 turns autoguidance off), "
                         f"got {cfg.autoguidance_scale}.")
    interval = cfg.autoguidance_interval
    if interval is not None and not (len(interval) == 2 and 0 <= interval[0] <= interval[1] < cfg.num_timesteps):
        raise ValueError(f"autoguidance_interval must be two timesteps t_low,t_high with 0 <= t_low <= t_high < "
                         f"{cfg.num_timesteps}, got {interval}.")
    if cfg.autoguidance_scale != 1.0 and cfg.guide_fraction is None:
        raise ValueError("autoguidance_scale needs a guide model: this run has none (it was trained without "
                         "--guide-fraction). Set autoguidance_scale to 1.")


PRESETS: dict[str, Config] = {
    # The reference tutorial's configuration, for a GPU: 50 epochs of batch 256 (11.7k steps).
    "paper": Config(
        preset="paper",
        model=UNetConfig(hidden_dims=(64, 128, 256), channel_mult=(1, 2, 4), num_res_blocks=2,
                         attention_resolutions=(8,), activation="gelu", time_embedding_dim=128),
        epochs=50, batch_size=256, learning_rate=1e-4, warmup_steps=500, weight_decay=1e-5,
        grad_clip=1.0, ema_decay=0.9999, ema_every=10, sample_steps=100, log_every=50, checkpoint_every=1000,
        keep_checkpoints_every=2000, ema_lengths=(0.05, 0.10),
    ),
    # Two CPU cores, about 20 minutes: a narrow UNet on 2x2 patches, batch 64, v-prediction with min-SNR,
    # a short EMA; DPM-Solver++(2M) SDE with 35 steps and autoguidance w = 2.5 at t >= 167 (57 network
    # evaluations per sample): the fewest, in a sweep on the time grid, that kept 100 evaluations' quality.
    # 9,000 steps: about 20 minutes on two cores (Results page), a fixed plan so that runs reproduce.
    "cpu": Config(
        preset="cpu",
        model=UNetConfig(hidden_dims=(16, 32, 64), num_res_blocks=1, attention_resolutions=(4,),
                         activation="silu", time_embedding_dim=64, max_norm_groups=8, patch_size=2),
        max_steps=9000, batch_size=64, learning_rate=1.4e-3, warmup_steps=200,
        prediction="v", loss="mse", loss_weighting="min_snr", weight_decay=0.0, ema_decay=0.999, ema_every=1,
        sampler="dpmpp_2m_sde", sample_steps=35, num_samples=1000, log_every=50, checkpoint_every=500,
        guide_fraction=0.15, autoguidance_scale=2.5, autoguidance_interval=(167, 999), keep_checkpoints_every=2000,
        ema_lengths=(0.05, 0.10),
    ),
    # Seconds: CI and notebook smoke runs.
    "tiny": Config(
        preset="tiny",
        model=UNetConfig(hidden_dims=(8, 16), num_res_blocks=1, attention_resolutions=(16,),
                         activation="silu", time_embedding_dim=16, max_norm_groups=4, num_heads=1),
        train_limit=512, epochs=1, max_steps=8, batch_size=32, learning_rate=1e-3, warmup_steps=2,
        weight_decay=0.0, ema_decay=0.99, ema_every=1, num_timesteps=100, sample_steps=5,
        num_samples=16, log_every=4, checkpoint_every=4, keep_checkpoints=2, keep_checkpoints_every=4, guide_fraction=0.5,
        autoguidance_scale=2.0, ema_lengths=(0.05, 0.10),
    ),
}


def quick() -> bool:
    """Whether $MNIST_DIFFUSION_QUICK asks for quick checks (QUICK_VARIABLE)."""
    return os.environ.get(QUICK_VARIABLE, "0") not in ("", "0")


def quick_cap(n: int, cap: int = QUICK_IMAGES) -> int:
    """`n`, or at most `cap` in a quick check (QUICK_VARIABLE): images drawn, steps timed or sampled."""
    return min(n, cap) if quick() else n


def quick_version(cfg: Config) -> Config:
    """`cfg` for a quick check (QUICK_VARIABLE): the UNet at 8 channels first, at most 16 images at a time,
    at most QUICK_SAMPLE_STEPS sampler steps."""
    m, narrow = cfg.model, max(1, cfg.model.channels[0] // 8)
    return cfg.replace(hidden_dims=tuple(c // narrow for c in m.channels), batch_size=min(cfg.batch_size, QUICK_IMAGES),
                       num_samples=min(cfg.num_samples, QUICK_IMAGES),
                       sample_steps=min(cfg.sample_steps, QUICK_SAMPLE_STEPS))


def default_preset_name() -> str:
    """`paper` when JAX sees an accelerator, else `cpu`."""
    return "cpu" if jax.default_backend() == "cpu" else "paper"


def get_config(preset: str | None = None, **overrides) -> Config:
    """A preset (default: chosen from the JAX backend) with fields overridden, validated. A flow-matching
    run (`objective="flow"`) takes FLOW_SETTINGS for the fields not given."""
    name = preset or default_preset_name()
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    if overrides.get("objective") == "flow":
        overrides = {**FLOW_SETTINGS, **overrides}
    cfg = PRESETS[name].replace(**overrides)
    return (quick_version(cfg) if quick() else cfg).validate()
