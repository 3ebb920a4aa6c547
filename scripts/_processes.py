"""Several training processes (scripts/train.py): joining them with `jax.distributed`, and a supervisor per
process that turns every way a process can end into one clear line.

With several processes, each `train.py` runs the same command again as its worker and waits for it. The
worker sends what JAX's C++ runtime prints (gloo, the distributed service, its stack traces) to a log file,
and process 1, 2, ... send everything there: only process 0 prints. When a worker ends without saying why
(another process died, so a collective failed or JAX's runtime stopped it), its supervisor names the lost
process, the newest checkpoint and the command that continues the run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORKER_LOG = "MNIST_DIFFUSION_WORKER_LOG"  # set for a supervised worker: the file its runtime messages go to
LOST_CONTACT = 4  # a worker's exit code when a collective with another process failed
HEARTBEAT_TIMEOUT_S = 60  # a process silent this long counts as dead (JAX's default: 100)
CLEAN_ENDS = (0, 2, 3, 130)  # success, bad input, NaN loss, Ctrl-C: the worker said why itself


def cluster_detected(environ=os.environ) -> bool:
    """Whether a cluster that `jax.distributed.initialize()` detects by itself (SLURM, Open MPI) started
    this process as one of several tasks."""
    tasks = environ.get("SLURM_NTASKS") or environ.get("OMPI_COMM_WORLD_SIZE") or "1"
    return any(v in environ for v in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")) and int(tasks) > 1


def process_id_of(args, environ=os.environ) -> int:
    """This process's number: --process-id, or the cluster's rank (SLURM, Open MPI)."""
    rank = environ.get("SLURM_PROCID") or environ.get("OMPI_COMM_WORLD_RANK") or "0"
    return args.process_id if args.process_id is not None else int(rank)


def slurm_local_device_ids(environ=os.environ) -> list[int] | None:
    """The GPUs this SLURM task drives when a node has more GPUs than tasks: an even share of the node's
    (one task per node: all of them). None where each task has one GPU, JAX's own choice (the GPU numbered
    SLURM_LOCALID), or SLURM gave no GPUs."""
    gpus = int(environ.get("SLURM_GPUS_ON_NODE") or 0)
    tasks = int(environ.get("SLURM_NTASKS_PER_NODE") or 0) or (
        int(environ.get("SLURM_NTASKS") or 1) // int(environ.get("SLURM_NNODES") or 1))
    if "SLURM_JOB_ID" not in environ or not gpus or tasks >= gpus:
        return None
    share, local = gpus // max(tasks, 1), int(environ.get("SLURM_LOCALID") or 0)
    return list(range(local * share, (local + 1) * share))


def join_processes(coordinator=None, num_processes=None, process_id=None, timeout_s: int = 300) -> None:
    """`jax.distributed.initialize` with these values (None: the cluster's). A process still alone after
    `timeout_s` seconds exits with what to check (JAX itself would abort with a C++ stack trace)."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices reduce over TCP (GPUs: NCCL)
    who = f"{num_processes} processes" if num_processes else "cluster's processes"
    where = coordinator or "from the cluster"

    def give_up():
        print(f"error: the {who} did not all join within {timeout_s} s (coordinator {where}; this is process "
              f"{process_id}). Start every process with the same --coordinator and --num-processes and a "
              f"different --process-id, and check that the coordinator's port is reachable. Nothing was written.",
              file=sys.stderr, flush=True)
        os._exit(2)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               local_device_ids=slurm_local_device_ids(), initialization_timeout=timeout_s + 60,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
    watchdog.cancel()


def lost_contact(err: BaseException) -> bool:
    """Whether `err` says that another process is gone: a collective or the distributed service failed."""
    return re.search(r"Gloo|NCCL|UNAVAILABLE|coordination service|Connection (closed|reset)|heartbeat",
                     str(err)) is not None


def become_worker(log_path: str, quiet: bool) -> None:
    """In a supervised worker: what the C++ runtime writes (and, `quiet`, everything) goes to the log; the
    worker stops when its supervisor is gone (killed), as a process of its own would."""
    log = open(log_path, "a", buffering=1)  # noqa: SIM115  (open for the process's whole life)
    if not quiet:  # Python's own output still reaches the terminal, through copies of the two descriptors
        sys.stdout, sys.stderr = (os.fdopen(os.dup(fd), "w", buffering=1) for fd in (1, 2))
    else:
        sys.stdout = sys.stderr = log
    for fd in (1, 2):
        os.dup2(log.fileno(), fd)
    supervisor = os.getppid()

    def stop_with_supervisor():
        while os.getppid() == supervisor:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=stop_with_supervisor, daemon=True).start()


def supervise(process_id: int, num_processes: int | None, out: str) -> int:
    """Run this same command as the worker of process `process_id` and wait for it; returns its exit code,
    after one clear line when it ended without one (LOST_CONTACT when it lost another process, else 1)."""
    log = Path(tempfile.gettempdir()) / f"mnist-diffusion-{os.getpid()}-process-{process_id}.log"
    worker = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env={**os.environ, WORKER_LOG: str(log)})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker too: it stops with its own message
    signal.signal(signal.SIGTERM, lambda *_: worker.terminate())
    code = worker.wait()
    text = log.read_text(errors="replace") if log.is_file() else ""
    if code in CLEAN_ENDS:
        if code and process_id and "error: " in text:  # a quiet process's own message, from its log
            print(text[text.rfind("error: "):].strip(), file=sys.stderr)
        if code == 0:
            log.unlink(missing_ok=True)
        return code
    why = why_it_stopped(code, text, process_id, num_processes)
    print(f"error: process {process_id} stopped: {why}. {how_to_continue(out)} Details: {log}",
          file=sys.stderr, flush=True)
    return LOST_CONTACT if why.startswith("it lost contact") else 1


def why_it_stopped(code: int, log_text: str, process_id: int, num_processes: int | None) -> str:
    """What ended a worker, from its exit code and its log: the lost process where the log names it."""
    lost = re.search(r"stopped sending heartbeats\):\s*([\d, \n]+)", log_text) or re.search(
        r"Task (\d+) heartbeat timeout", log_text)
    if lost:
        who = "process " + ", ".join(re.split(r"[,\s]+", lost.group(1).strip(", \n")))
    elif re.search(r"coordination service.*(Socket closed|Failed to send RPC)|leader task", log_text):
        who = "process 0 (the coordinator)"
    else:
        who = f"process {1 - process_id}" if num_processes == 2 else "another process"
    if code == LOST_CONTACT or code in (134, -signal.SIGABRT):
        return f"it lost contact with {who}, which stopped"
    if code < 0:
        return f"it was stopped by signal {signal.Signals(-code).name}"
    last = [line for line in log_text.splitlines() if line.strip()][-1:] or [f"exit code {code}"]
    return f"it failed ({last[0].strip()[:300]})"


def how_to_continue(out: str) -> str:
    """Where the run stands: its newest complete checkpoint (orbax renames a checkpoint's folder when it is
    complete) and the command that continues it."""
    folder = Path(out) / "checkpoints"
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    if not steps:
        return "No checkpoint was written yet: start the run again with the same command and a new --out."
    return (f"Nothing saved is lost: the newest checkpoint is step {steps[-1]} in {folder}; continue with "
            f"`python scripts/train.py --out {out} --resume` (one process or several).")
