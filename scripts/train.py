"""Train a DDPM on MNIST (or Fashion-MNIST) and write a run folder.

    python scripts/train.py                      # the preset for this machine (cpu or paper)
    python scripts/train.py --preset tiny --out runs/smoke
    python scripts/train.py --out runs/cpu --resume   # continue a run that was stopped or killed

Writes to --out: config.json, history.csv/json, training_curve.png, samples.png, samples.npy,
summary.json, quality figures (evaluate.json) and checkpoints/ (orbax).
"""

from __future__ import annotations

import argparse
import sys
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
    add_config_flags(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
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
