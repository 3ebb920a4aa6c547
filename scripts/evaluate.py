"""Score samples offline: Frechet distance in an MNIST classifier's feature space, confidence,
class coverage, precision/recall and nearest-training-neighbour distances.

    python scripts/evaluate.py runs/cpu                 # reads runs/cpu/samples.npy, writes evaluate.json
    python scripts/evaluate.py some_samples.npy         # (N, 32, 32, 1) or (N, 28, 28[, 1]) in [-1, 1]

The classifier's weights ship with the package (helpers/assets/); see helpers/metrics.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import helpers  # noqa: F401  (sets the GPU-memory variables before TensorFlow / JAX start)
from _cli import fail


def load_samples(path: Path):
    """Samples in [-1, 1] as (N, 32, 32, 1): 28 x 28 inputs are padded with -1 like training data;
    uint8 inputs (0..255) are rescaled."""
    import numpy as np

    try:
        x = np.load(path)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path} cannot be read as a .npy array of samples ({err}).") from err
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 127.5 - 1.0
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1 or x.shape[1:3] not in ((28, 28), (32, 32)):
        raise ValueError(f"{path}: expected (N, 32, 32, 1) or (N, 28, 28[, 1]) images, got {x.shape}.")
    if x.shape[1] == 28:
        x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
    if x.min() < -1.001 or x.max() > 1.001:
        raise ValueError(f"{path}: values must lie in [-1, 1] (got {x.min():.3f}..{x.max():.3f}).")
    return x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="a run folder (uses its samples.npy) or a .npy file of samples")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--manual-dir", help="folder with the original MNIST archives (offline)")
    p.add_argument("--out", help="where to write evaluate.json (default: the run folder or next to the .npy)")
    args = p.parse_args(argv)

    from helpers.data import DataNotFoundError
    from helpers.metrics import evaluate_samples

    target = Path(args.target)
    npy = target / "samples.npy" if target.is_dir() else target
    if not npy.is_file():
        fail(f"{npy} not found: pass a run folder written by scripts/train.py or a .npy file of samples.")
    try:
        x = load_samples(npy)
        out_dir = Path(args.out) if args.out else npy.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        figures = evaluate_samples(x, out_dir=out_dir, data_dir=args.data_dir, manual_dir=args.manual_dir)
    except (ValueError, DataNotFoundError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot write {err.filename}: {err.strerror}. Choose another --out.")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu()  # before JAX starts; may restart this script once (helpers.environment)
    sys.exit(main())
