"""A run in a folder (config, plan, checkpoints, history, curve, samples, summary): `train_run`, which
scripts/train.py and the notebooks call, and `load_run`. Every process trains; process 0 writes and samples."""

import json
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from helpers.checkpoints import CheckpointError, CheckpointManager, read_config
from helpers.config import QUICK_STEPS, QUICK_VARIABLE, Config, quick
from helpers.data import load_split
from helpers.distributed import data_mesh, every_process_or_none, is_main_process, local_copy
from helpers.environment import cpu_times, machine_description, steal_share
from helpers.metrics import evaluate_samples
from helpers.plotting import plot_samples, plot_training_curve
from helpers.posthoc_ema import reconstruct, save_snapshot
from helpers.sampling import Autoguidance, make_sampler, sample
from helpers.training import (BatchFeed, History, StopOnCtrlC, TrainState, make_plan, noise_schedule, place_state,
                              seconds_per_step, steps_for_minutes, stop_at_non_finite_loss, take_guide_at, train)
from helpers.unet import count_params


class RunExistsError(FileExistsError):
    """The run folder exists (and --resume was not given) or cannot be made there."""


def train_run(cfg: Config | None, out, *, data_dir=None, manual_dir=None, resume: bool = False,
              progress: bool = True, evaluate: bool = True, log=print, devices=None) -> dict:
    """Train a run in `out` (or resume it: `cfg` None, the folder's own config) and write its files; returns
    the summary (summary.json; an empty dict on processes other than 0). Every process trains, on a mesh of
    `devices` (default: all); process 0 prints, writes the files, samples and scores."""
    out, main = Path(out), is_main_process()
    log = log if main else (lambda *args, **kwargs: None)
    cfg, images, labels, mesh = prepare_run(cfg, out, resume, data_dir, manual_dir, devices)
    # The state on every device, the batches, the plan (fixed now) and, on resume, the newest checkpoint.
    state = place_state(TrainState(cfg), mesh)
    feed = BatchFeed(cfg, state, images, labels, mesh)
    plan = make_plan(cfg, len(images), saved_total_steps(out) if resume else budget_steps(cfg, feed, log))
    ckpt = CheckpointManager(out / "checkpoints", cfg.keep_checkpoints, cfg.keep_checkpoints_every)
    meta = ckpt.restore_latest(state) if resume else None
    history = History(plan, cfg.batch_size, meta and meta["history"], log=tqdm.write if main else log)
    if resume:
        log(f"resumed {out} at step {state.step}" if meta else f"no checkpoint in {out}: starting at step 0")
    elif main:
        (out / "config.json").write_text(cfg.to_json())
        (out / "plan.json").write_text(json.dumps(plan.describe(), indent=2))
    log(describe_run(cfg, plan, state, len(images)))
    # Train; after each chunk the hooks stop at a NaN, record the losses, take the guide, save a checkpoint
    # (written in the background) at the plan's steps, move the progress bar and stop if Ctrl-C was pressed.
    start, counters, t0 = state.step, cpu_times(), time.perf_counter()
    bar = tqdm(total=plan.total_steps, initial=start, desc="training", unit="step", disable=not (progress and main))
    try:
        with bar, StopOnCtrlC() as stop_on_ctrl_c:
            train(state, feed, plan, cfg, [stop_at_non_finite_loss, history, take_guide_at(plan.guide_step),
                                           checkpoint_at(plan.checkpoint_steps, ckpt, cfg, history.record,
                                                         out if main else None),
                                           progress_bar(bar, cfg.batch_size), stop_on_ctrl_c])
    except KeyboardInterrupt:
        done = history.record["step"][-1] + 1 if len(history.record["step"]) else start
        log(f"\ninterrupted after step {done}: the checkpoints in {out / 'checkpoints'} are kept (the newest: "
            f"{'step %d' % max(ckpt.steps()) if ckpt.steps() else 'none yet'}); continue with --resume")
        raise
    finally:
        ckpt.wait()  # a background save completes, however the run ends
    seconds = time.perf_counter() - t0
    trained = {"steps": state.step, "epochs": round(state.step / plan.steps_per_epoch, 3),
               "train_seconds": round(seconds, 1), "cpu_steal_share": steal_share(counters),
               "images_per_s": round((state.step - start) * cfg.batch_size / seconds, 1)}
    with every_process_or_none():  # the others wait for process 0's samples and scores
        return finish_run(cfg, local_copy(state), history.record, out, trained, evaluate=evaluate,
                          data_dir=data_dir, manual_dir=manual_dir, log=log) if main else {}


def prepare_run(cfg: Config | None, out: Path, resume: bool, data_dir=None, manual_dir=None, devices=None):
    """The run's config, training data and mesh, checked before any work; a new run's folder made. Every
    process checks its own part and, if one cannot go on, all of them stop (helpers.distributed); a folder
    made here goes again then, so nothing is half-written."""
    made = False
    try:
        with every_process_or_none():
            cfg = read_config(out) if resume else cfg.validate()
            if resume and quick() and (saved_total_steps(out) or 0) > QUICK_STEPS:
                raise ValueError(f"{out} was not made as a quick check: resume it without {QUICK_VARIABLE}=1.")
            sampler_of(cfg)  # a bad sampler setting fails now, not after training
            mesh = data_mesh(devices)
            if cfg.batch_size % mesh.devices.size:
                raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {mesh.devices.size} devices "
                                 f"that train it: change --batch-size.")
            made = is_main_process() and not resume and make_run_folder(out)
            images, labels = load_split(cfg.dataset, "train", data_dir=data_dir, manual_dir=manual_dir,
                                        limit=cfg.train_limit)
            cfg.validate(num_train_examples=len(images))
    except Exception:
        if made:
            out.rmdir()
        raise
    return cfg, images, labels, mesh


def make_run_folder(out: Path) -> bool:
    """Make the folder of a new run, refusing one that holds anything; returns whether it was created."""
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


def saved_total_steps(out: Path) -> int | None:
    """The steps a resumed run planned when it started (its plan.json), None when it has none."""
    path = out / "plan.json"
    return json.loads(path.read_text()).get("total_steps") if path.is_file() else None


def budget_steps(cfg: Config, feed: BatchFeed, log=print) -> int | None:
    """With a time budget (`minutes`), the steps that fill it at the speed of a step timed now (process 0's,
    so that every process plans alike); else None, the config's own steps."""
    if cfg.minutes is None:
        return None
    seconds = float(multihost_utils.broadcast_one_to_all(np.float32(seconds_per_step(cfg, feed))))
    steps = steps_for_minutes(seconds, cfg.minutes, cfg.log_every)
    log(f"timed one step at {1000 * seconds:.0f} ms on this machine: {steps:,} steps fill the {cfg.minutes:g}-minute "
        f"budget (planned once; the run does not re-plan)")
    return steps


def checkpoint_at(steps, ckpt: CheckpointManager, cfg: Config, record: dict, out: Path | None):
    """Hook: a checkpoint (state, config, history) at each of `steps`, with history.csv/json and the post-hoc
    EMA snapshot (written first, so that a checkpoint never lacks its snapshot) in `out`."""
    def save_checkpoint(state, chunk):
        if chunk.stop in steps:
            if out is not None and state.power_ema is not None:
                save_snapshot(out, state.step, state.power_ema.lengths, local_copy(state.power_ema).snapshot())
            ckpt.save(state.step, state, {"config": json.loads(cfg.to_json()), "history": record})
            if out is not None:  # history.json and history.csv (step, epoch, loss, lr, images_per_s)
                (out / "history.json").write_text(json.dumps(record))
                rows = [",".join(record)] + [",".join(map(str, row)) for row in zip(*record.values())]
                (out / "history.csv").write_text("\n".join(rows) + "\n")

    return save_checkpoint


def progress_bar(bar: tqdm, batch_size: int):
    """Hook: move `bar` and show the chunk's last loss and images per second."""
    def show_progress(state, chunk):
        bar.set_postfix(loss=f"{chunk.losses[-1]:.4f}", img_s=f"{len(chunk.losses) * batch_size / chunk.seconds:.0f}",
                        refresh=False)
        bar.update(chunk.stop - chunk.start)

    return show_progress


def describe_run(cfg: Config, plan, state: TrainState, num_examples: int) -> str:
    """One line: preset, machine, model, steps and epochs, the guide's step."""
    guide = f"; the EMA weights at step {plan.guide_step:,} become the autoguidance guide" if plan.guide_step else ""
    return (f"{cfg.preset} preset on {machine_description()}: UNet {cfg.model.channels}, "
            f"{count_params(state.model):,} parameters; {plan.total_steps:,} steps of batch {cfg.batch_size} "
            f"({plan.total_steps / plan.steps_per_epoch:.2f} epochs of {num_examples:,} images){guide}")


def autoguidance_of(cfg: Config, state: TrainState, scale: float | None = None) -> Autoguidance | None:
    """Whether and how a run samples with autoguidance, decided here: None at scale 1 (default: the
    config's), else its guide. The config's rule says when a scale needs a guide (helpers.config); what
    the state adds is whether the guide has been taken yet."""
    scale = cfg.autoguidance_scale if scale is None else float(scale)
    if scale == 1.0:
        return None
    cfg.replace(autoguidance_scale=scale).validate()
    if state.guide.step < 0:
        raise ValueError(f"Autoguidance needs the run's guide model, which is not taken yet at step {state.step}: "
                         f"use --autoguidance-scale 1.")
    return Autoguidance(state.guide.model, scale, cfg.autoguidance_interval)


def draw_samples(cfg: Config, state: TrainState, key, num_samples: int, *, autoguidance: Autoguidance | None,
                 use_ema: bool = True, **options):
    """`helpers.sampling.sample` from the run's EMA (or raw) weights with its sampler settings, unless
    `options` override them; a class-conditional model draws the labels 0-9 in turn."""
    opts = dict(sampler=cfg.sampler, steps=cfg.sample_steps, eta=cfg.eta, prediction=cfg.prediction,
                objective=cfg.objective)
    if cfg.model.num_classes:
        opts.update(labels=np.arange(num_samples) % cfg.model.num_classes, guidance_scale=cfg.guidance_scale)
    model = state.ema.model if use_ema else state.model
    return sample(model, noise_schedule(cfg), key, num_samples, autoguidance=autoguidance, **{**opts, **options})


def use_posthoc_ema(run_dir, state: TrainState, sigma_rel: float, step: int | None = None, guide: bool = False) -> dict:
    """Replace the state's EMA weights (or, `guide`, its autoguidance guide's) by the post-hoc EMA of length
    sigma_rel after `step` (default: the newest snapshot; helpers.posthoc_ema); returns what it was made of."""
    target = state.guide if guide else state.ema
    if target is None:
        raise ValueError(f"{run_dir} has no autoguidance guide to replace (it was trained without --guide-fraction).")
    params = nnx.state(target.model, nnx.Param)
    leaves, made_of = reconstruct(run_dir, sigma_rel, jax.tree.leaves(params), step)
    nnx.update(target.model, jax.tree.unflatten(jax.tree.structure(params), [jax.numpy.asarray(x) for x in leaves]))
    if guide:
        target.taken_at[...] = jax.numpy.asarray(made_of["step"], jax.numpy.int32)
    return made_of


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


def sampler_of(cfg: Config):
    """The sampler a run's settings name (checked by helpers.sampling.make_sampler)."""
    return make_sampler(noise_schedule(cfg), cfg.sampler, cfg.sample_steps, cfg.eta, cfg.objective)


def finish_run(cfg: Config, state: TrainState, record: dict, out: Path, trained: dict, *, evaluate: bool,
               data_dir=None, manual_dir=None, log=print) -> dict:
    """Process 0, after training: training_curve.png, the samples (samples.npy, samples.png) and their
    scores, summary.json; returns the summary."""
    plt.close(plot_training_curve(record, path=out / "training_curve.png",
                                  title=f"{cfg.preset}: loss and learning rate"))
    guidance = autoguidance_of(cfg, state)
    t0 = time.perf_counter()
    x = np.asarray(draw_samples(cfg, state, jax.random.key(cfg.seed + 1), cfg.num_samples, autoguidance=guidance))
    sample_seconds = time.perf_counter() - t0
    np.save(out / "samples.npy", x)
    title = f"{cfg.sampler} with {sampler_of(cfg).steps} steps (EMA weights), step {state.step}"
    title += f", autoguidance w = {guidance.scale:g}" if guidance else ""
    shown, ncols = x, None
    if cfg.model.num_classes:  # labels 0, 1, ..., 9 in turn: one column per class, ten rows
        title += f"\ncolumn = label, guidance w = {cfg.guidance_scale:g}"
        shown, ncols = x[:10 * cfg.model.num_classes], cfg.model.num_classes
    plt.close(plot_samples(shown, title=title, path=out / "samples.png", ncols=ncols))
    summary = {
        "preset": cfg.preset, "machine": machine_description(), **trained,
        "final_loss": float(np.mean(record["loss"][-50:])), "parameters": count_params(state.model),
        "sample_seconds": round(sample_seconds, 1), "num_samples": int(len(x)), "run_dir": str(out),
        "autoguidance": guidance and {"scale": guidance.scale, "guide_step": state.guide.step},
    }
    if evaluate and cfg.dataset == "mnist":  # the classifier knows digits only; tiny is a smoke test
        summary["quality"] = evaluate_samples(x, out_dir=out, data_dir=data_dir, manual_dir=manual_dir, log=log,
                                              quick=cfg.preset == "tiny" or quick())
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    steal = trained["cpu_steal_share"]
    log(f"done: {state.step} steps in {trained['train_seconds'] / 60:.1f} min ({summary['images_per_s']} images/s"
        f"{f'; other machines took {steal:.0%} of the CPU time (steal)' if steal else ''}), final loss "
        f"{summary['final_loss']:.4f}; samples in {sample_seconds:.1f} s\nfiles in {out}: config.json, plan.json, "
        f"history.csv, training_curve.png, samples.png, samples.npy, checkpoints/"
        f"{', ema_snapshots/' if cfg.ema_lengths else ''}")
    return summary
