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
import traceback
import time

import helpers  # noqa: F401  (sets the GPU-memory variables before TensorFlow / JAX start)
from _cli import add_config_flags, fail, overrides_from
from _processes import (LOST_CONTACT, WORKER_LOG, become_worker, cluster_detected, join_processes, lost_contact,
                        process_id_of, supervise)


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


def several_processes(args) -> bool:
    """Whether the flags, or a cluster job such as SLURM's, ask for several processes."""
    return any(v is not None for v in (args.coordinator, args.num_processes, args.process_id)) or cluster_detected()


def check_process_flags(args) -> None:
    """The process flags go together and make sense, and several processes share one --out."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    if any(v is None for v in flags) and not all(v is None for v in flags):
        fail("--coordinator, --num-processes and --process-id go together: give all three (or none).")
    if args.coordinator is not None:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit():
            fail(f"--coordinator must be HOST:PORT (e.g. 127.0.0.1:4747), got {args.coordinator!r}.")
        if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
            fail(f"--process-id must be in 0..{args.num_processes - 1} and --num-processes at least 1, "
                 f"got {args.process_id} of {args.num_processes}.")
    if args.join_timeout <= 0:
        fail(f"--join-timeout must be positive, got {args.join_timeout}.")
    if not args.out:
        fail("several processes need --out, the same run folder for every process (on a file system they all "
             "reach).")


def main(argv=None) -> int:
    """One process; with several, each runs its supervisor (scripts/_processes.py) and that its worker."""
    args = parse_args(argv)
    if not several_processes(args):
        return train(args, several=False)
    check_process_flags(args)
    if WORKER_LOG not in os.environ:
        return supervise(process_id_of(args), args.num_processes, args.out)
    become_worker(os.environ[WORKER_LOG], quiet=process_id_of(args) != 0)
    try:
        join_processes(args.coordinator, args.num_processes, args.process_id, timeout_s=args.join_timeout)
        code = train(args, several=True)  # JAX's backends start here, after joining
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # noqa: BLE001  (a bug: its traceback goes to the log, the supervisor says one line)
        with open(os.environ[WORKER_LOG], "a") as log:
            traceback.print_exc(file=log)
        code = 1
    sys.stdout.flush(), sys.stderr.flush()
    if code:  # leave at once: JAX's shutdown barrier would wait for processes that may be gone
        os._exit(code)
    return 0


def train(args, several: bool) -> int:
    """Train as the flags say; every bad input, and a NaN loss, ends with one line and an exit code."""
    from helpers.checkpoints import CheckpointError
    from helpers.config import get_config
    from helpers.data import DataNotFoundError
    from helpers.distributed import ProcessError
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
    except KeyboardInterrupt:
        return 130
    except NonFiniteLossError as err:
        fail(str(err), code=3)
    except Exception as err:
        if several and lost_contact(err):  # first: a lost process may surface inside any error type
            return LOST_CONTACT  # the supervisor names the lost process
        if isinstance(err, (ValueError, TypeError, DataNotFoundError, RunExistsError, CheckpointError, ProcessError)):
            fail(str(err))
        raise
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu(announce=process_id_of(parse_args()) == 0)  # before JAX starts; may restart this script once
    sys.exit(main())
