"""A complete run in a folder (config, checkpoints, history, curve, samples, summary): `train_run`,
which `scripts/train.py` wraps in a command line and the notebooks call directly."""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

from helpers.checkpoints import CheckpointManager, read_config
from helpers.config import Config
from helpers.data import load_split
from helpers.metrics import evaluate_samples
from helpers.plotting import plot_samples, plot_training_curve
from helpers.training import FIT_MARGIN, REPLAN_EVERY, REPLAN_UNTIL, Trainer, seconds_per_step, steps_that_fit
from helpers.unet import count_params, create_unet

class RunExistsError(FileExistsError):
    """The run folder exists (and --resume was not given) or cannot be made there."""


def fit_steps_to_time(trainer: Trainer, log=print) -> Config:
    """Time `trainer`'s step, re-plan it to the steps that fit its time limit, and return the config
    with that max_steps: the learning-rate schedule then ends inside the limit on this machine."""
    cfg, timed = trainer.cfg, max(20, trainer.cfg.log_every)
    seconds = seconds_per_step(trainer, steps=timed)
    steps = steps_that_fit(seconds, cfg.time_limit_minutes, chunk=cfg.log_every)
    log(f"timed {timed} steps: {1000 * seconds:.0f} ms per step on this machine, so {steps:,} steps fill "
        f"{FIT_MARGIN:.0%} of the {cfg.time_limit_minutes:g}-minute limit (the preset's plan: {trainer.total_steps:,}); "
        f"training re-plans from its own rate every {REPLAN_EVERY:.0%} of the limit, up to {REPLAN_UNTIL:.0%}")
    trainer.cfg = cfg.replace(max_steps=steps, fit_steps_to_time=True)
    trainer.plan(steps)
    return trainer.cfg


def machine_description() -> str:
    """E.g. 'cpu x1 (Intel(R) Xeon(R) Processor, 2 cores)' or 'gpu x1 (NVIDIA H100 80GB HBM3, 16 cores)'."""
    devices = jax.devices()
    kind = getattr(devices[0], "device_kind", "")
    if jax.default_backend() == "cpu" or not kind:
        lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
        kind = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                    platform.processor() or platform.machine())
    return f"{jax.default_backend()} x{len(devices)} ({kind}, {os.cpu_count()} cores)"


def cpu_times() -> np.ndarray | None:
    """The machine's CPU time counters from /proc/stat (user ... steal), or None where there are none."""
    stat = Path("/proc/stat")
    return np.array(stat.read_text().split()[1:9], dtype=float) if stat.is_file() else None


def steal_share(before: np.ndarray | None) -> float | None:
    """Share of the CPU time since `before` that the hypervisor gave to other machines ("steal"):
    time a virtual machine's loop waited that no change to our code can win back."""
    after = cpu_times()
    return None if before is None or after is None else round(float((after - before)[7] / (after - before).sum()), 3)


def write_history(history: dict, out: Path) -> None:
    """history.json and history.csv (step, epoch, loss, lr, images_per_s)."""
    (out / "history.json").write_text(json.dumps(history))
    with open(out / "history.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(history))
        writer.writerows(zip(*history.values()))


def _make_run_folder(out: Path, resume: bool) -> bool:
    """Refuse a folder that cannot hold a new run before any work is done; returns whether it was made."""
    if resume:
        return False  # read_config says what is missing
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunExistsError(f"{out} already exists. Pass --resume to continue that run, or choose another "
                             f"--out; nothing was overwritten.")
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunExistsError(f"Cannot create the run folder {out}: {err.strerror} ({err.filename}). "
                             f"Choose another --out.") from err
    return made


def start_run(cfg: Config | None, out: Path, *, resume: bool, data_dir=None, manual_dir=None, log=print) -> Trainer:
    """The run's Trainer with its data, planned (fit_steps_to_time) or resumed; config.json written."""
    made = _make_run_folder(out, resume)
    cfg = read_config(out) if resume else cfg.validate()
    try:
        images, labels = load_split(cfg.dataset, "train", data_dir=data_dir, manual_dir=manual_dir,
                                    limit=cfg.train_limit)
    except Exception:
        if made:  # nothing half-written: the folder goes again when there is no data
            out.rmdir()
        raise
    trainer = Trainer(cfg, create_unet(cfg.model, seed=cfg.seed), images, labels)
    if resume:  # a resumed run keeps the plan in its config.json
        step = CheckpointManager(out / "checkpoints").restore_latest(trainer)
        log(f"resumed {out} at step {step}" if step is not None else f"no checkpoint in {out}: starting at step 0")
    elif cfg.fit_steps_to_time:
        fit_steps_to_time(trainer, log=log)
    (out / "config.json").write_text(trainer.cfg.to_json())
    log(f"{trainer.cfg.preset} preset on {machine_description()}: UNet {cfg.model.channels}, "
        f"{count_params(trainer.model):,} parameters; {trainer.total_steps} steps of batch {cfg.batch_size} "
        f"({trainer.total_steps / trainer.steps_per_epoch:.2f} epochs of {trainer.num_examples} images)"
        + (f"; the EMA weights at step {trainer.guide_step} are kept as the autoguidance guide" if trainer.guide else ""))
    return trainer


def train_with_checkpoints(trainer: Trainer, out: Path, progress: bool = True, replan: bool = False,
                           log=print) -> float:
    """`trainer.fit` (re-planned as it goes with `replan`) with a checkpoint every `checkpoint_every` steps,
    written in the background, on Ctrl-C and at the end; returns the training time in seconds."""
    ckpt = CheckpointManager(out / "checkpoints", keep=trainer.cfg.keep_checkpoints,
                             keep_every=trainer.cfg.keep_checkpoints_every)
    last_saved = [trainer.step]

    def save(tr):
        last_saved[0] = ckpt.save(tr)
        (out / "config.json").write_text(tr.cfg.to_json())  # a re-planned max_steps, for --resume
        write_history(tr.history, out)

    def on_chunk(tr):
        if tr.step - last_saved[0] >= tr.cfg.checkpoint_every:
            save(tr)

    t0 = time.perf_counter()
    try:
        trainer.fit(progress=progress, on_chunk=on_chunk, replan=replan)
    except KeyboardInterrupt:
        save(trainer)
        log(f"\ninterrupted: saved step {trainer.step} to {out}/checkpoints; continue with --resume")
        raise
    finally:
        ckpt.wait()  # a background save completes before the run ends, however it ends
    seconds = time.perf_counter() - t0
    if trainer.step != last_saved[0] or not ckpt.steps():
        save(trainer)
    ckpt.wait()
    return seconds


def sample_and_plot(trainer: Trainer, out: Path, log=print) -> tuple[np.ndarray, float, bool]:
    """The run's samples (samples.npy, samples.png) and training curve; returns (samples, seconds, guided)."""
    cfg = trainer.cfg
    plt.close(plot_training_curve(trainer.history, path=out / "training_curve.png",
                                  title=f"{cfg.preset}: loss and learning rate"))
    guided = cfg.autoguidance_scale != 1.0 and trainer.guide.ready
    if cfg.autoguidance_scale != 1.0 and not guided:  # e.g. a time limit that came before the guide's step
        log(f"the run stopped before its guide was taken (step {trainer.guide_step}): sampling without autoguidance")
    t0 = time.perf_counter()
    x = np.asarray(trainer.sample(jax.random.key(cfg.seed + 1), cfg.num_samples,
                                  autoguidance_scale=cfg.autoguidance_scale if guided else 1.0))
    seconds = time.perf_counter() - t0
    np.save(out / "samples.npy", x)
    steps = cfg.num_timesteps if cfg.sampler == "ddpm" else cfg.sample_steps
    title = f"{cfg.sampler} with {steps} steps (EMA weights), step {trainer.step}"
    title += f", autoguidance w = {cfg.autoguidance_scale:g}" if guided else ""
    shown, ncols = x, None
    if cfg.model.num_classes:  # labels 0, 1, ..., 9 in turn: one column per class, ten rows
        title += f"\ncolumn = label, guidance w = {cfg.guidance_scale:g}"
        shown, ncols = x[:10 * cfg.model.num_classes], cfg.model.num_classes
    plt.close(plot_samples(shown, title=title, path=out / "samples.png", ncols=ncols))
    return x, seconds, guided


def train_run(cfg: Config | None, out, *, data_dir=None, manual_dir=None, resume: bool = False,
              progress: bool = True, evaluate: bool = True, log=print) -> dict:
    """Train (or resume) a run in folder `out` and write every file a user wants to see; returns
    the summary (also written to `summary.json`)."""
    out = Path(out)
    trainer = start_run(cfg, out, resume=resume, data_dir=data_dir, manual_dir=manual_dir, log=log)
    cfg, start_step, counters = trainer.cfg, trainer.step, cpu_times()
    train_seconds = train_with_checkpoints(trainer, out, progress=progress, log=log,
                                           replan=cfg.fit_steps_to_time and not resume)
    train_steal = steal_share(counters)
    x, sample_seconds, guided = sample_and_plot(trainer, out, log=log)
    losses = trainer.history["loss"]
    summary = {
        "preset": cfg.preset, "machine": machine_description(), "steps": trainer.step,
        "epochs": round(trainer.step / trainer.steps_per_epoch, 3), "train_seconds": round(train_seconds, 1),
        "images_per_s": round((trainer.step - start_step) * cfg.batch_size / max(train_seconds, 1e-9), 1),
        "time_limit_share": round(train_seconds / (60 * cfg.time_limit_minutes), 3) if cfg.time_limit_minutes else None,
        "cpu_steal_share": train_steal,
        "final_loss": float(np.mean(losses[-50:])), "parameters": count_params(trainer.model),
        "sample_seconds": round(sample_seconds, 1), "num_samples": int(len(x)), "run_dir": str(out),
        "autoguidance": {"scale": cfg.autoguidance_scale, "guide_step": trainer.guide.step} if guided else None,
    }
    if evaluate and cfg.dataset == "mnist":  # the classifier knows digits only; tiny is a smoke test
        summary["quality"] = evaluate_samples(x, out_dir=out, data_dir=data_dir, manual_dir=manual_dir, log=log,
                                              quick=cfg.preset == "tiny")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    steal = f"; other machines took {train_steal:.0%} of the CPU time (steal)" if train_steal else ""
    share = f", {summary['time_limit_share']:.1%} of the limit" if cfg.time_limit_minutes else ""
    log(f"done: {trainer.step} steps in {train_seconds / 60:.1f} min{share} ({summary['images_per_s']} images/s{steal}), "
        f"final loss {summary['final_loss']:.4f}; samples in {sample_seconds:.1f} s\n"
        f"files in {out}: config.json, history.csv, training_curve.png, samples.png, samples.npy, checkpoints/")
    return summary
