"""Run configuration and presets: `paper` (the reference tutorial, for GPUs), `cpu` and `tiny`.

Every field can be overridden: `get_config("cpu", batch_size=128)`, or `--batch-size 128` (scripts/train.py
builds its flags from these fields). A `Config` is passive: it names choices and checks them, builds
nothing, and a run never changes it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import jax

from helpers.data import DATASETS
from helpers.losses import FLOW_TIMES, LOSSES, PREDICTIONS, WEIGHTINGS
from helpers.schedules import SCHEDULES
from helpers.unet import UNetConfig

OBJECTIVES = ("ddpm", "flow")
DDPM_SAMPLERS = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_sde")
FLOW_SAMPLERS = ("euler", "heun")  # ODE solvers for a flow-matching run
SAMPLERS = DDPM_SAMPLERS + FLOW_SAMPLERS


@dataclass(frozen=True)
class Config:
    """Everything that defines a training run; `validate()` says what to change in a bad one."""
    dataset: str = "mnist"
    train_limit: int | None = None  # use only the first N training images (tiny runs)
    model: UNetConfig = field(default_factory=UNetConfig)
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
        choices = {"dataset": DATASETS, "prediction": PREDICTIONS, "loss": LOSSES, "loss_weighting": WEIGHTINGS,
                   "schedule": SCHEDULES, "sampler": SAMPLERS, "objective": OBJECTIVES, "flow_times": FLOW_TIMES}
        for name, allowed in choices.items():
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
        for name, (low, high) in {"end_lr_fraction": (0.0, 1.0), "eta": (0.0, 1.0)}.items():
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {getattr(self, name)}.")
        for name in ("ema_decay", "label_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        _check_schedule_and_sampler(self)
        check_objective(self.objective, self.sampler, self.prediction, self.loss_weighting)
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
        d = {k: v for k, v in d.items() if k not in ("time_limit_minutes", "fit_steps_to_time")}
        model = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("model", {}).items()}
        if d.get("autoguidance_interval") is not None:
            d["autoguidance_interval"] = tuple(d["autoguidance_interval"])
        unknown = set(d) - set(cls.__dataclass_fields__) | set(model) - set(UNetConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown config fields {sorted(unknown)}.")
        return cls(model=UNetConfig(**model), **d)


def _check_schedule_and_sampler(cfg: Config) -> None:
    """The noise schedule's length and betas, and the sampler's steps (1..T; DDPM takes all T)."""
    if cfg.num_timesteps < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {cfg.num_timesteps}.")
    if cfg.schedule == "linear" and not 0 < cfg.beta_start <= cfg.beta_end < 1:
        raise ValueError(f"Need 0 < beta_start <= beta_end < 1, got {cfg.beta_start}, {cfg.beta_end}.")
    if cfg.sampler != "ddpm" and not 1 <= cfg.sample_steps <= cfg.num_timesteps:
        raise ValueError(f"sample steps must be in 1..{cfg.num_timesteps} (the schedule's timesteps), "
                         f"got {cfg.sample_steps}.")


def check_objective(objective: str, sampler: str, prediction: str = "v", weighting: str = "uniform") -> None:
    """A flow-matching run predicts the velocity ("v"), weights every t alike and samples with an ODE
    solver; a DDPM run samples with the DDPM samplers."""
    if objective == "ddpm" and sampler in FLOW_SAMPLERS:
        raise ValueError(f"Sampler {sampler!r} is for flow-matching runs: choose one of {', '.join(DDPM_SAMPLERS)}.")
    fixes = [f for f, wrong in (("--prediction v", prediction != "v"), ("--loss-weighting uniform", weighting != "uniform"),
                                ("--sampler euler (or heun)", sampler not in FLOW_SAMPLERS)) if wrong]
    if objective == "flow" and fixes:
        raise ValueError(f"A flow-matching run predicts the velocity eps - x0, weights every t alike and samples "
                         f"with an ODE solver: add {', '.join(fixes)}.")


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
        keep_checkpoints_every=2000,
    ),
    # Two CPU cores, about 20 minutes: a narrow UNet on 2x2 patches, batch 64, v-prediction with min-SNR,
    # a short EMA; DPM-Solver++(2M) SDE with 50 steps and autoguidance (100 network evaluations per sample).
    # 9,000 steps: what the main job trained in 19.6 minutes on 2-core AMD EPYCs (Results page).
    "cpu": Config(
        preset="cpu",
        model=UNetConfig(hidden_dims=(16, 32, 64), num_res_blocks=1, attention_resolutions=(4,),
                         activation="silu", time_embedding_dim=64, max_norm_groups=8, patch_size=2),
        max_steps=9000, batch_size=64, learning_rate=1.4e-3, warmup_steps=200,
        prediction="v", loss="mse", loss_weighting="min_snr", weight_decay=0.0, ema_decay=0.999, ema_every=1,
        sampler="dpmpp_2m_sde", sample_steps=50, eta=1.0, num_samples=1000, log_every=50, checkpoint_every=500,
        guide_fraction=0.15, autoguidance_scale=2.0, keep_checkpoints_every=2000,
    ),
    # Seconds: CI and notebook smoke runs.
    "tiny": Config(
        preset="tiny",
        model=UNetConfig(hidden_dims=(8, 16), num_res_blocks=1, attention_resolutions=(16,),
                         activation="silu", time_embedding_dim=16, max_norm_groups=4, num_heads=1),
        train_limit=512, epochs=1, max_steps=8, batch_size=32, learning_rate=1e-3, warmup_steps=2,
        weight_decay=0.0, ema_decay=0.99, ema_every=1, num_timesteps=100, sample_steps=5,
        num_samples=16, log_every=4, checkpoint_every=4, keep_checkpoints=2, keep_checkpoints_every=4, guide_fraction=0.5,
        autoguidance_scale=2.0,
    ),
}


def default_preset_name() -> str:
    """`paper` when JAX sees an accelerator, else `cpu`."""
    return "cpu" if jax.default_backend() == "cpu" else "paper"


def get_config(preset: str | None = None, **overrides) -> Config:
    """A preset (default: chosen from the JAX backend) with fields overridden, validated."""
    name = preset or default_preset_name()
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    return PRESETS[name].replace(**overrides).validate()
