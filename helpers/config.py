"""Run configuration and presets: `paper` (the reference tutorial, for GPUs), `cpu` and `tiny`.

Every field can be overridden: `get_config("cpu", batch_size=64)` in a notebook, or
`--batch-size 64` on the command line (scripts/train.py builds its flags from these fields).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from helpers.losses import LOSSES, PREDICTIONS, WEIGHTINGS
from helpers.schedules import SCHEDULES
from helpers.unet import UNetConfig

SAMPLERS = ("ddim", "ddpm")


@dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Sizes are validated by `validate()`."""

    # data
    dataset: str = "mnist"
    train_limit: int | None = None  # use only the first N training images (tiny runs)
    # model (see helpers.unet.UNetConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    # diffusion
    schedule: str = "cosine"
    num_timesteps: int = 1000
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02  # linear schedule only
    prediction: str = "epsilon"
    loss: str = "huber"
    huber_delta: float = 1.0
    loss_weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    label_dropout: float = 0.1  # class-conditional models only: P(label -> "no label") for CFG
    # optimisation
    epochs: int = 50
    max_steps: int | None = None  # stop after this many steps (the LR schedule spans them)
    batch_size: int = 256
    learning_rate: float = 1e-4  # peak, reached at the end of warmup
    warmup_steps: int = 500
    end_lr_fraction: float = 0.01  # cosine decay ends at 1% of the peak
    weight_decay: float = 1e-5
    grad_clip: float = 1.0
    # EMA of the weights (used for sampling)
    ema_decay: float = 0.9999
    ema_every: int = 10
    ema_warmup: bool = True  # decay_t = min(decay, (1 + n) / (10 + n)) after n updates
    # sampling at the end of training
    sampler: str = "ddim"
    sample_steps: int = 100
    eta: float = 0.0
    num_samples: int = 64
    guidance_scale: float = 3.0  # class-conditional models only: CFG weight w of the samples (labels 0-9 in turn)
    # Autoguidance (Karras et al. 2024): keep the EMA weights at this fraction of the run as a weak
    # "guide" model, and sample with out = guide + w (model - guide), w = autoguidance_scale (1: off).
    guide_fraction: float | None = None
    autoguidance_scale: float = 1.0
    # bookkeeping
    seed: int = 42
    log_every: int = 25  # steps per compiled chunk: the host reads metrics once per chunk
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    time_limit_minutes: float | None = None  # stop (and save) after this much training time
    # Fit the plan to this machine: time a few steps first, then set max_steps to what fills the
    # time limit, so the learning-rate decay ends inside it on a slower or faster machine. Setting
    # max_steps or epochs yourself turns this off (an explicit step count wins).
    fit_steps_to_time: bool = False
    preset: str = "custom"

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed; model fields may be given directly (`hidden_dims=...`)."""
        model_fields = {f.name for f in dataclasses.fields(UNetConfig)}
        model_changes = {k: changes.pop(k) for k in list(changes) if k in model_fields}
        model = changes.pop("model", self.model)
        if ("max_steps" in changes or "epochs" in changes) and "fit_steps_to_time" not in changes:
            changes["fit_steps_to_time"] = False  # an explicit step count wins over fitting to the time limit
        if model_changes:
            model = model.replace(**model_changes)
        return dataclasses.replace(self, model=model, **changes)

    def validate(self, num_train_examples: int | None = None) -> "Config":
        """Raise ValueError with what to change for any value that cannot work."""
        from helpers.data import DATASETS

        def positive(name):
            v = getattr(self, name)
            if v is None or v <= 0:
                raise ValueError(f"{name} must be positive, got {v}.")

        if self.dataset not in DATASETS:
            raise ValueError(f"Unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}.")
        choices = {"schedule": SCHEDULES, "prediction": PREDICTIONS, "loss": LOSSES,
                   "loss_weighting": WEIGHTINGS, "sampler": SAMPLERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Unknown {name} {getattr(self, name)!r}: choose one of {', '.join(allowed)}.")
        for name in ("num_timesteps", "epochs", "batch_size", "learning_rate", "sample_steps",
                     "num_samples", "log_every", "checkpoint_every", "keep_checkpoints", "ema_every",
                     "huber_delta", "min_snr_gamma"):
            positive(name)
        for name in ("max_steps", "train_limit", "time_limit_minutes"):
            if getattr(self, name) is not None:
                positive(name)
        if self.fit_steps_to_time and self.time_limit_minutes is None:
            raise ValueError("fit_steps_to_time needs a time limit: set time_limit_minutes (--time-limit-minutes), "
                             "or set max_steps instead.")
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be at least 2, got {self.num_timesteps}.")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("warmup_steps, weight_decay and grad_clip must not be negative.")
        if not 0.0 <= self.end_lr_fraction <= 1.0:
            raise ValueError(f"end_lr_fraction must be in [0, 1], got {self.end_lr_fraction}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}.")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}.")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must not be negative, got {self.guidance_scale} (0: ignore the "
                             f"label, 1: the plain conditional model, > 1: stronger guidance).")
        if self.guide_fraction is not None and not 0.0 < self.guide_fraction < 1.0:
            raise ValueError(f"guide_fraction must be in (0, 1) (the share of the run after which the guide "
                             f"is kept), got {self.guide_fraction}.")
        if self.autoguidance_scale < 1.0:
            raise ValueError(f"autoguidance_scale must be at least 1 (1 turns autoguidance off), "
                             f"got {self.autoguidance_scale}.")
        if self.autoguidance_scale != 1.0 and self.guide_fraction is None:
            raise ValueError("autoguidance_scale needs a guide model: set guide_fraction (--guide-fraction 0.15 "
                             "keeps the EMA weights at 15% of the run), or set autoguidance_scale to 1.")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}.")
        if self.sample_steps > self.num_timesteps:
            raise ValueError(f"sample_steps ({self.sample_steps}) cannot exceed num_timesteps ({self.num_timesteps}).")
        if self.beta_start <= 0 or self.beta_end >= 1 or self.beta_start > self.beta_end:
            raise ValueError(f"Need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}.")
        self.model.validate()
        if num_train_examples is not None and self.batch_size > num_train_examples:
            raise ValueError(f"batch_size {self.batch_size} is larger than the {num_train_examples} training "
                             f"images: lower --batch-size (or raise --train-limit).")
        return self

    def total_steps(self, num_train_examples: int) -> int:
        """Steps of the run: epochs x steps per epoch, or max_steps when given."""
        from helpers.data import steps_per_epoch

        if self.max_steps is not None:
            return int(self.max_steps)
        return int(self.epochs * steps_per_epoch(num_train_examples, self.batch_size))

    # ------------------------------------------------------------------ JSON round trip
    def to_dict(self) -> dict:
        """The config as plain JSON-able values (the model as a nested dict)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The config as indented JSON (what `config.json` of a run holds)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """The inverse of `to_dict`; unknown fields are an error, not ignored."""
        d = dict(d)
        model = d.pop("model", {})
        tuples = ("hidden_dims", "channel_mult", "attention_resolutions")
        model = {k: (tuple(v) if k in tuples and v is not None else v) for k, v in model.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown config fields {sorted(unknown)}.")
        return cls(model=UNetConfig(**model), **d)


PRESETS: dict[str, Config] = {
    # The reference tutorial's configuration, for a GPU (about 11.7k steps of batch 256).
    # Its comment says warmup "over 1000 steps" while WARMUP_STEPS = 500: we use 500.
    # optax's decay_steps includes the warmup, so the schedule spans the whole run.
    "paper": Config(
        preset="paper",
        model=UNetConfig(hidden_dims=(64, 128, 256), channel_mult=(1, 2, 4), num_res_blocks=2,
                         attention_resolutions=(8,), activation="gelu", time_embedding_dim=128,
                         dropout_rate=0.0),
        epochs=50, batch_size=256, learning_rate=1e-4, warmup_steps=500, weight_decay=1e-5,
        grad_clip=1.0, ema_decay=0.9999, ema_every=10, sample_steps=100,
        log_every=50, checkpoint_every=1000,
    ),
    # Two CPU cores, at most 20 minutes of training. Measured choices (docs/results.md):
    # space-to-depth 2 (the UNet works at 16/8/4) is ~4x cheaper per image than full resolution;
    # at that resolution a small UNet (16/32/64, 0.7M parameters) that takes ~2.5x more steps in the
    # 20 minutes beats a 4x wider one on every sample figure; batch 32 (more updates per second);
    # v-prediction with min-SNR weighting (confident samples 61% -> 70% over epsilon at equal time),
    # peak LR 1e-3, EMA 0.999 with warm-up; sampling with DDIM-100 at eta = 1 (stochastic: 74% ->
    # 82% confident over deterministic DDIM-50 from the same weights) and autoguidance w = 2 by the
    # EMA weights at 15% of the run (Karras et al. 2024; on one run's weights: 77% -> 89% confident,
    # FD 128 -> 31; w = 1.5 / 2.5: 86% / 91% with FD 32 / 52). fit_steps_to_time times the
    # first steps and sets max_steps to what fills the 20 minutes on the machine at hand; the
    # max_steps below is that plan on the 2-core machine the choices were measured on.
    "cpu": Config(
        preset="cpu",
        model=UNetConfig(hidden_dims=(16, 32, 64), num_res_blocks=1, attention_resolutions=(4,),
                         activation="silu", time_embedding_dim=64, max_norm_groups=8, patch_size=2),
        epochs=5, max_steps=8300, batch_size=32, learning_rate=1e-3, warmup_steps=200,
        prediction="v", loss="mse", loss_weighting="min_snr", weight_decay=0.0, ema_decay=0.999, ema_every=1,
        sample_steps=100, eta=1.0, num_samples=1000, log_every=50, checkpoint_every=500,
        time_limit_minutes=20.0, fit_steps_to_time=True, guide_fraction=0.15, autoguidance_scale=2.0,
    ),
    # Seconds: CI and notebook smoke runs.
    "tiny": Config(
        preset="tiny",
        model=UNetConfig(hidden_dims=(8, 16), num_res_blocks=1, attention_resolutions=(16,),
                         activation="silu", time_embedding_dim=16, max_norm_groups=4, num_heads=1),
        train_limit=512, epochs=1, max_steps=8, batch_size=32, learning_rate=1e-3, warmup_steps=2,
        weight_decay=0.0, ema_decay=0.99, ema_every=1, num_timesteps=100, sample_steps=5,
        num_samples=16, log_every=4, checkpoint_every=4, keep_checkpoints=2, guide_fraction=0.5,
        autoguidance_scale=2.0,
    ),
}


def default_preset_name() -> str:
    """`paper` when JAX sees an accelerator, else `cpu`."""
    import jax

    return "cpu" if jax.default_backend() == "cpu" else "paper"


def get_config(preset: str | None = None, **overrides) -> Config:
    """A preset (default: chosen from the JAX backend) with fields overridden, validated."""
    name = preset or default_preset_name()
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    cfg = PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
    return cfg.validate()
