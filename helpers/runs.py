"""A run in a folder (config, plan, checkpoints, history, curve, samples, summary): `train_run`, which
scripts/train.py and the notebooks call, and `load_run`. Every process trains; process 0 writes and samples."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from helpers.checkpoints import CheckpointError, CheckpointManager, read_config
from helpers.config import Config, check_objective
from helpers.data import load_split
from helpers.distributed import data_mesh, is_main_process, local_copy
from helpers.environment import cpu_times, machine_description, steal_share
from helpers.metrics import evaluate_samples
from helpers.plotting import plot_samples, plot_training_curve
from helpers.sampling import Autoguidance, sample
from helpers.training import (BatchFeed, History, Plan, TrainState, make_plan, noise_schedule,
                              place_state, seconds_per_step, steps_for_minutes, stop_at_non_finite_loss,
                              take_guide_at, train)
from helpers.unet import count_params


class RunExistsError(FileExistsError):
    """The run folder exists (and --resume was not given) or cannot be made there."""


class Run(NamedTuple):
    """A run being trained: its folder, config and plan (both fixed), state, data feed and history."""
    out: Path
    cfg: Config
    plan: Plan
    state: TrainState
    feed: BatchFeed
    history: History


def write_history(history: dict, out: Path) -> None:
    """history.json and history.csv (step, epoch, loss, lr, images_per_s)."""
    (out / "history.json").write_text(json.dumps(history))
    rows = [",".join(history)] + [",".join(map(str, row)) for row in zip(*history.values())]
    (out / "history.csv").write_text("\n".join(rows) + "\n")


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


def plan_run(cfg: Config, feed: BatchFeed, log=print) -> Plan:
    """The config's plan or, with a time budget (`minutes`), the steps that fill it at the speed of one
    step timed now (process 0's, so that every process plans alike)."""
    if cfg.minutes is None:
        return make_plan(cfg, feed.num_examples)
    seconds = float(multihost_utils.broadcast_one_to_all(np.float32(seconds_per_step(cfg, feed))))
    plan = make_plan(cfg, feed.num_examples, steps_for_minutes(seconds, cfg.minutes, cfg.log_every))
    log(f"timed one step at {1000 * seconds:.0f} ms on this machine: {plan.total_steps:,} steps fill the "
        f"{cfg.minutes:g}-minute budget (planned once; the run does not re-plan)")
    return plan


def start_run(cfg: Config | None, out: Path, *, resume: bool, data_dir=None, manual_dir=None, log=print,
              devices=None) -> Run:
    """A new run (config.json, plan.json written) or a resumed one, on the mesh of `devices` (default: all)."""
    made = _make_run_folder(out, resume) if is_main_process() else False
    cfg = read_config(out) if resume else cfg.validate()
    try:
        images, labels = load_split(cfg.dataset, "train", data_dir=data_dir, manual_dir=manual_dir,
                                    limit=cfg.train_limit)
        cfg.validate(num_train_examples=len(images))
    except Exception:
        if made:  # nothing half-written: the folder goes again when there is no data
            out.rmdir()
        raise
    mesh = data_mesh(devices)
    state = place_state(TrainState(cfg), mesh)
    feed = BatchFeed(cfg, state, images, labels, mesh)
    if not resume:
        plan = plan_run(cfg, feed, log)
        if is_main_process():
            (out / "config.json").write_text(cfg.to_json())
            (out / "plan.json").write_text(json.dumps(plan.describe(), indent=2))
        return Run(out, cfg, plan, state, feed, History(plan, cfg.batch_size))
    saved = json.loads((out / "plan.json").read_text()) if (out / "plan.json").is_file() else {}
    plan = make_plan(cfg, len(images), saved.get("total_steps"))
    meta = CheckpointManager(out / "checkpoints").restore_latest(state)
    log(f"resumed {out} at step {state.step}" if meta else f"no checkpoint in {out}: starting at step 0")
    return Run(out, cfg, plan, state, feed, History(plan, cfg.batch_size, meta and meta["history"]))


def describe_run(run: Run) -> str:
    """One line: preset, machine, model, steps and epochs, the guide's step."""
    cfg, plan = run.cfg, run.plan
    guide = f"; the EMA weights at step {plan.guide_step:,} become the autoguidance guide" if plan.guide_step else ""
    return (f"{cfg.preset} preset on {machine_description()}: UNet {cfg.model.channels}, "
            f"{count_params(run.state.model):,} parameters; {plan.total_steps:,} steps of batch {cfg.batch_size} "
            f"({plan.total_steps / plan.steps_per_epoch:.2f} epochs of {run.feed.num_examples:,} images){guide}")


def train_with_checkpoints(run: Run, progress: bool = True, log=print) -> float:
    """`train` with the run's hooks, among them a checkpoint (written in the background) at each of the
    plan's checkpoint steps; returns the training time in seconds."""
    cfg, main = run.cfg, is_main_process()
    ckpt = CheckpointManager(run.out / "checkpoints", keep=cfg.keep_checkpoints, keep_every=cfg.keep_checkpoints_every)

    def save_checkpoint(state, chunk):
        if chunk.stop in run.plan.checkpoint_steps:
            ckpt.save(state.step, state, {"config": json.loads(cfg.to_json()), "history": run.history.record})
            if main:
                write_history(run.history.record, run.out)

    bar = tqdm(total=run.plan.total_steps, initial=run.state.step, desc="training", unit="step",
               disable=not (progress and main))

    def show_progress(state, chunk):
        bar.set_postfix(loss=f"{chunk.losses[-1]:.4f}", img_s=f"{len(chunk.losses) * cfg.batch_size / chunk.seconds:.0f}",
                        refresh=False)
        bar.update(chunk.stop - chunk.start)

    hooks = [stop_at_non_finite_loss, run.history, take_guide_at(run.plan.guide_step), save_checkpoint, show_progress]
    t0 = time.perf_counter()
    try:
        with bar:
            train(run.state, run.feed, run.plan, cfg, hooks)
    except KeyboardInterrupt:
        log(f"\ninterrupted at step {run.state.step}: the checkpoints in {run.out}/checkpoints are kept; "
            f"continue with --resume")
        raise
    finally:
        ckpt.wait()  # a background save completes before the run ends, however it ends
    return time.perf_counter() - t0


def autoguidance_of(cfg: Config, state: TrainState, scale: float | None = None) -> Autoguidance | None:
    """Whether and how a run samples with autoguidance, decided here: None at scale 1 (default: the
    config's), else its guide; a clear error when it has no guide or has not taken it yet."""
    scale = cfg.autoguidance_scale if scale is None else float(scale)
    if scale == 1.0:
        return None
    if state.guide is None or state.guide.step < 0:
        why = "it was trained without --guide-fraction" if state.guide is None else "not taken yet at this step"
        raise ValueError(f"Autoguidance needs the run's guide model ({why}): use --autoguidance-scale 1.")
    return Autoguidance(state.guide.model, scale, cfg.autoguidance_interval)


def draw_samples(cfg: Config, state: TrainState, key, num_samples: int, *, autoguidance: Autoguidance | None,
                 use_ema: bool = True, **options):
    """`helpers.sampling.sample` from the run's EMA (or raw) weights with its sampler settings, unless
    `options` override them; a class-conditional model draws the labels 0-9 in turn."""
    opts = dict(sampler=cfg.sampler, steps=cfg.sample_steps, eta=cfg.eta, prediction=cfg.prediction)
    check_objective(cfg.objective, options.get("sampler", cfg.sampler))
    if cfg.model.num_classes:
        opts.update(labels=np.arange(num_samples) % cfg.model.num_classes, guidance_scale=cfg.guidance_scale)
    model = state.ema.model if use_ema else state.model
    return sample(model, noise_schedule(cfg), key, num_samples, autoguidance=autoguidance, **{**opts, **options})


def load_run(run_dir, step: int | None = None) -> tuple[Config, TrainState]:
    """(config, state) of a run folder at its newest readable checkpoint (or `step`'s); the state is built
    with `nnx.eval_shape` (shapes only) and filled by the checkpoint."""
    cfg = read_config(run_dir)
    state = nnx.eval_shape(lambda: TrainState(cfg))
    manager = CheckpointManager(Path(run_dir) / "checkpoints")
    if step is not None:
        manager.restore(step, state)
    elif manager.restore_latest(state) is None:
        raise CheckpointError(f"{run_dir} has no checkpoint yet (looked in {manager.directory}).")
    return cfg, state


def sample_and_plot(cfg: Config, state: TrainState, history: dict, out: Path):
    """samples.npy, samples.png and training_curve.png; returns (samples, seconds, autoguidance)."""
    plt.close(plot_training_curve(history, path=out / "training_curve.png",
                                  title=f"{cfg.preset}: loss and learning rate"))
    guidance = autoguidance_of(cfg, state)
    t0 = time.perf_counter()
    x = np.asarray(draw_samples(cfg, state, jax.random.key(cfg.seed + 1), cfg.num_samples, autoguidance=guidance))
    seconds = time.perf_counter() - t0
    np.save(out / "samples.npy", x)
    steps = cfg.num_timesteps if cfg.sampler == "ddpm" else cfg.sample_steps
    title = f"{cfg.sampler} with {steps} steps (EMA weights), step {state.step}"
    title += f", autoguidance w = {guidance.scale:g}" if guidance else ""
    shown, ncols = x, None
    if cfg.model.num_classes:  # labels 0, 1, ..., 9 in turn: one column per class, ten rows
        title += f"\ncolumn = label, guidance w = {cfg.guidance_scale:g}"
        shown, ncols = x[:10 * cfg.model.num_classes], cfg.model.num_classes
    plt.close(plot_samples(shown, title=title, path=out / "samples.png", ncols=ncols))
    return x, seconds, guidance


def train_run(cfg: Config | None, out, *, data_dir=None, manual_dir=None, resume: bool = False,
              progress: bool = True, evaluate: bool = True, log=print, devices=None) -> dict:
    """Train (or resume) a run in `out` and write its files; returns the summary (summary.json; an
    empty dict on processes other than 0)."""
    out, main = Path(out), is_main_process()
    log = log if main else (lambda *args, **kwargs: None)
    run = start_run(cfg, out, resume=resume, data_dir=data_dir, manual_dir=manual_dir, log=log, devices=devices)
    log(describe_run(run))
    cfg, start_step, counters = run.cfg, run.state.step, cpu_times()
    train_seconds = train_with_checkpoints(run, progress=progress, log=log)
    train_steal = steal_share(counters)
    if not main:
        return {}
    state = local_copy(run.state)
    x, sample_seconds, guidance = sample_and_plot(cfg, state, run.history.record, out)
    summary = {
        "preset": cfg.preset, "machine": machine_description(), "steps": state.step,
        "epochs": round(state.step / run.plan.steps_per_epoch, 3), "train_seconds": round(train_seconds, 1),
        "images_per_s": round((state.step - start_step) * cfg.batch_size / max(train_seconds, 1e-9), 1),
        "cpu_steal_share": train_steal, "final_loss": float(np.mean(run.history.record["loss"][-50:])),
        "parameters": count_params(state.model), "sample_seconds": round(sample_seconds, 1),
        "num_samples": int(len(x)), "run_dir": str(out),
        "autoguidance": guidance and {"scale": guidance.scale, "guide_step": state.guide.step},
    }
    if evaluate and cfg.dataset == "mnist":  # the classifier knows digits only; tiny is a smoke test
        summary["quality"] = evaluate_samples(x, out_dir=out, data_dir=data_dir, manual_dir=manual_dir, log=log,
                                              quick=cfg.preset == "tiny")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    steal = f"; other machines took {train_steal:.0%} of the CPU time (steal)" if train_steal else ""
    log(f"done: {state.step} steps in {train_seconds / 60:.1f} min ({summary['images_per_s']} images/s{steal}), "
        f"final loss {summary['final_loss']:.4f}; samples in {sample_seconds:.1f} s\n"
        f"files in {out}: config.json, plan.json, history.csv, training_curve.png, samples.png, samples.npy, "
        f"checkpoints/")
    return summary
