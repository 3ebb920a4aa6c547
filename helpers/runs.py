"""A complete training run in a folder: config, checkpoints, history, curve, samples, summary.

`scripts/train.py` is a thin command line around `train_run`; notebooks call it directly.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

from helpers.checkpoints import CheckpointManager, read_config
from helpers.config import Config
from helpers.data import load_split
from helpers.training import Trainer
from helpers.unet import count_params, create_unet


class RunExistsError(FileExistsError):
    """The run folder already exists and --resume was not given."""


FIT_MARGIN = 0.92  # share of the time limit a fitted plan fills: room for checkpoints and a machine that slows


def steps_that_fit(seconds_per_step: float, minutes: float, chunk: int = 1, margin: float = FIT_MARGIN) -> int:
    """Steps of `seconds_per_step` that fill `margin` of `minutes`, in whole chunks (at least one)."""
    if not seconds_per_step > 0:
        raise ValueError(f"seconds_per_step must be positive, got {seconds_per_step}.")
    n = int(margin * 60.0 * minutes / seconds_per_step)
    return max(chunk, n // chunk * chunk)


def fit_steps_to_time(cfg: Config, trainer: Trainer, log=print) -> Config:
    """`cfg` with max_steps set to the steps that fit in its time limit, timed on `trainer` (whose
    state is left as it was): the learning-rate schedule then ends inside the limit on this machine."""
    timed = max(20, cfg.log_every)
    seconds = trainer.seconds_per_step(steps=timed)
    steps = steps_that_fit(seconds, cfg.time_limit_minutes, chunk=cfg.log_every)
    log(f"timed {timed} steps: {1000 * seconds:.0f} ms per step on this machine, so {steps:,} steps fill "
        f"{FIT_MARGIN:.0%} of the {cfg.time_limit_minutes:g}-minute limit (the preset's plan: "
        f"{cfg.total_steps(trainer.num_examples):,})")
    return cfg.replace(max_steps=steps, fit_steps_to_time=True)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """E.g. 'cpu x1 (Intel(R) Xeon(R) Processor, 2 cores)' or 'gpu x1 (NVIDIA H100 80GB HBM3, 16 cores)'."""
    import os

    devs = jax.devices()
    kind = getattr(devs[0], "device_kind", "")
    if jax.default_backend() == "cpu" or not kind:
        kind = _cpu_model()
    return f"{jax.default_backend()} x{len(devs)} ({kind}, {os.cpu_count()} cores)"


def write_history(history: dict, out: Path) -> None:
    """history.json and history.csv (step, epoch, loss, lr, images_per_s)."""
    (out / "history.json").write_text(json.dumps(history))
    keys = list(history)
    with open(out / "history.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        w.writerows(zip(*(history[k] for k in keys)))


def train_run(cfg: Config | None, out, *, data_dir=None, manual_dir=None, resume: bool = False,
              progress: bool = True, evaluate: bool = True, log=print) -> dict:
    """Train (or resume) a run in folder `out` and write every file a user wants to see.

    Returns the summary dict (also written to `summary.json`).
    """
    from helpers.plotting import plot_samples, plot_training_curve, use_headless_backend_if_needed

    out = Path(out)
    if resume:
        if not (out / "config.json").is_file():
            raise FileNotFoundError(f"Nothing to resume in {out}: it has no config.json. Start a new run "
                                    f"without --resume.")
        cfg = Config.from_dict(read_config(out))
    elif out.exists() and any(out.iterdir()):
        raise RunExistsError(f"{out} already exists. Pass --resume to continue that run, or choose "
                             f"another --out; nothing was overwritten.")
    cfg.validate()
    images, labels = load_split(cfg.dataset, "train", data_dir=data_dir, manual_dir=manual_dir,
                                limit=cfg.train_limit)
    cfg.validate(num_train_examples=len(images))
    model = create_unet(cfg.model, seed=cfg.seed)
    trainer = Trainer(cfg, model, images, labels)
    if cfg.fit_steps_to_time and not resume:  # a resumed run keeps the plan in its config.json
        cfg = fit_steps_to_time(cfg, trainer, log=log)
        trainer = Trainer(cfg, model, images, labels)  # the same initial weights, the fitted LR schedule
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.to_json())
    ckpt = CheckpointManager(out / "checkpoints", keep=cfg.keep_checkpoints)
    if resume:
        step = ckpt.restore_latest(trainer)
        log(f"resumed {out} at step {step}" if step is not None else f"no checkpoint in {out}: starting at step 0")
    log(f"{cfg.preset} preset on {machine_description()}: UNet {cfg.model.channels}, "
        f"{count_params(model):,} parameters; {trainer.total_steps} steps of batch {cfg.batch_size} "
        f"({trainer.total_steps / trainer.steps_per_epoch:.2f} epochs of {trainer.num_examples} images)"
        + (f"; the EMA weights at step {trainer.guide_step} are kept as the autoguidance guide"
           if trainer.guide is not None else ""))

    last_saved = [trainer.step]

    def on_chunk(tr):
        if tr.step - last_saved[0] >= cfg.checkpoint_every:
            ckpt.save(tr)
            last_saved[0] = tr.step
            write_history(tr.history, out)

    t0 = time.perf_counter()
    start_step = trainer.step
    try:
        trainer.fit(progress=progress, on_chunk=on_chunk)
    except KeyboardInterrupt:
        ckpt.save(trainer)
        write_history(trainer.history, out)
        log(f"\ninterrupted: saved step {trainer.step} to {out}/checkpoints; continue with --resume")
        raise
    train_seconds = time.perf_counter() - t0
    if trainer.step != last_saved[0] or not ckpt.steps():
        ckpt.save(trainer)
    write_history(trainer.history, out)

    use_headless_backend_if_needed()
    import matplotlib.pyplot as plt

    plt.close(plot_training_curve(trainer.history, path=out / "training_curve.png",
                                  title=f"{cfg.preset}: loss and learning rate"))
    guided = cfg.autoguidance_scale != 1.0
    if guided and not trainer.guide.ready:  # e.g. a time limit that stopped the run before the guide's step
        log(f"the run stopped before its autoguidance guide was taken (step {trainer.guide_step}): "
            f"sampling without autoguidance")
        guided = False
    t1 = time.perf_counter()
    x = np.asarray(trainer.sample(jax.random.key(cfg.seed + 1), cfg.num_samples,  # EMA weights
                                  autoguidance_scale=cfg.autoguidance_scale if guided else 1.0))
    sample_seconds = time.perf_counter() - t1
    np.save(out / "samples.npy", x)
    title = f"{cfg.sampler.upper()}-{cfg.sample_steps} samples (EMA weights), step {trainer.step}"
    if guided:
        title += f", autoguidance w = {cfg.autoguidance_scale:g}"
    shown, ncols = x, None
    if cfg.model.num_classes:  # labels 0, 1, ..., 9 in turn: one column per class, ten rows
        title += f"\ncolumn = label, guidance w = {cfg.guidance_scale:g}"
        shown, ncols = x[:10 * cfg.model.num_classes], cfg.model.num_classes
    plt.close(plot_samples(shown, title=title, path=out / "samples.png", ncols=ncols))

    steps_run = trainer.step - start_step
    losses = trainer.history["loss"]
    summary = {
        "preset": cfg.preset, "machine": machine_description(), "steps": trainer.step,
        "epochs": round(trainer.step / trainer.steps_per_epoch, 3), "train_seconds": round(train_seconds, 1),
        "images_per_s": round(steps_run * cfg.batch_size / max(train_seconds, 1e-9), 1),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "parameters": count_params(trainer.model), "sample_seconds": round(sample_seconds, 1),
        "num_samples": int(len(x)), "run_dir": str(out),
        "autoguidance": {"scale": cfg.autoguidance_scale, "guide_step": trainer.guide.step}
        if guided else None,
    }
    if evaluate and cfg.dataset == "mnist":  # the evaluation classifier knows digits only
        from helpers.metrics import evaluate_samples

        # the tiny preset is a smoke test: a rough classifier trained in seconds is enough for it
        summary["quality"] = evaluate_samples(x, out_dir=out, data_dir=data_dir, manual_dir=manual_dir, log=log,
                                              quick=cfg.preset == "tiny")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"done: {trainer.step} steps in {train_seconds / 60:.1f} min ({summary['images_per_s']} images/s), "
        f"final loss {summary['final_loss']:.4f}; samples in {sample_seconds:.1f} s\n"
        f"files in {out}: config.json, history.csv, training_curve.png, samples.png, samples.npy, checkpoints/")
    return summary
