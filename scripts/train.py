"""Train a DDPM on MNIST (or Fashion-MNIST) and write a run folder.

    python scripts/train.py                      # the preset for this machine (cpu or paper)
    python scripts/train.py --preset tiny --out runs/smoke
    python scripts/train.py --out runs/cpu --resume   # continue a run that was stopped or killed
    python scripts/train.py --minutes 10              # a time budget: time one step, plan the run once

    # data-parallel over two processes (run both; on a SLURM cluster JAX finds these values itself)
    python scripts/train.py --out runs/two --coordinator 127.0.0.1:4747 --num-processes 2 --process-id 0
    python scripts/train.py --out runs/two --coordinator 127.0.0.1:4747 --num-processes 2 --process-id 1

Writes to --out: config.json, plan.json, history.csv/json, training_curve.png, samples.png, samples.npy,
summary.json, quality figures (evaluate.json) and checkpoints/ (orbax).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import helpers  # noqa: F401  (sets the GPU-memory variables before TensorFlow / JAX start)
from _cli import add_config_flags, fail, overrides_from


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="paper | cpu | tiny (default: paper on an accelerator, cpu otherwise)")
    p.add_argument("--dataset", help="mnist | fashion_mnist (default: mnist)")
    p.add_argument("--data-dir", help="TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--manual-dir", help="folder holding the four original archives, for offline preparation")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run folder (default: runs/<preset>-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--no-evaluate", action="store_true", help="skip the sample-quality figures at the end")
    group = p.add_argument_group("several processes (docs: Training on several processes or GPUs)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, the same for every process")
    group.add_argument("--num-processes", type=int, metavar="N", help="how many processes train together")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's number, 0 to N-1")
    group.add_argument("--join-timeout", type=int, default=300, metavar="S",
                       help="seconds to wait for every process to join (default: 300)")
    add_config_flags(p)
    return p.parse_args(argv)


def cluster_detected(environ=os.environ) -> bool:
    """Whether a cluster that `jax.distributed.initialize()` detects by itself (SLURM, Open MPI) started
    this process as one of several tasks."""
    tasks = environ.get("SLURM_NTASKS") or environ.get("OMPI_COMM_WORLD_SIZE") or "1"
    return any(v in environ for v in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")) and int(tasks) > 1


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
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s + 60)
    watchdog.cancel()


def join_processes_from(args) -> None:
    """Join the other processes when the flags (or a cluster such as SLURM) say there are any."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    if all(v is None for v in flags):
        if cluster_detected():
            join_processes(timeout_s=args.join_timeout)
        return
    if any(v is None for v in flags):
        fail("--coordinator, --num-processes and --process-id go together: give all three (or none).")
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit():
        fail(f"--coordinator must be HOST:PORT (e.g. 127.0.0.1:4747), got {args.coordinator!r}.")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        fail(f"--process-id must be in 0..{args.num_processes - 1} and --num-processes at least 1, "
             f"got {args.process_id} of {args.num_processes}.")
    if args.join_timeout <= 0:
        fail(f"--join-timeout must be positive, got {args.join_timeout}.")
    join_processes(args.coordinator, args.num_processes, args.process_id, timeout_s=args.join_timeout)


def main(argv=None) -> int:
    args = parse_args(argv)
    join_processes_from(args)  # before anything starts JAX's backends
    from helpers.checkpoints import CheckpointError
    from helpers.config import get_config
    from helpers.data import DataNotFoundError
    from helpers.runs import RunExistsError, train_run
    from helpers.training import NonFiniteLossError

    if args.resume and not args.out:
        fail("--resume needs --out, the run folder to continue.")
    overrides = overrides_from(args)
    overrides.update({k: getattr(args, k) for k in ("dataset", "seed") if getattr(args, k) is not None})
    try:
        cfg = None if args.resume else get_config(args.preset, **overrides)
        if args.resume and (overrides or args.preset):
            print("note: --resume uses the run's own config.json; other hyperparameter flags are ignored.")
        out = args.out or f"runs/{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        train_run(cfg, out, data_dir=args.data_dir, manual_dir=args.manual_dir, resume=args.resume,
                  progress=not args.no_progress, evaluate=not args.no_evaluate)
    except (ValueError, TypeError, DataNotFoundError, RunExistsError, CheckpointError) as err:
        fail(str(err))
    except NonFiniteLossError as err:
        fail(str(err), code=3)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu()  # before JAX starts; may restart this script once (helpers.environment)
    sys.exit(main())
