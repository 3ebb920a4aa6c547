"""Calibration of the sample-quality figures: what real, damaged and random digits score.

    python tools/calibrate_metrics.py [--n 1000] [--markdown]

Prints one JSON line per case and, with --markdown, a table for the README / docs.
"""

from __future__ import annotations

import argparse
import json
import sys

import helpers  # noqa: F401  (sets the GPU-memory variables before TensorFlow / JAX start)


def cases(ev, n: int, rng):
    import numpy as np

    real = ev.test_m11[:n]
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16

    def blur(x):
        for axis in (1, 2):
            x = np.apply_along_axis(lambda m: np.convolve(m, k, mode="same"), axis, x)
        return x

    yield "real test digits", real
    yield "real training digits", ev.train_m11[:n]
    yield "test digits, blurred (5x5 binomial)", np.clip(blur(real), -1, 1)
    yield "test digits + Gaussian noise (sigma 0.3)", np.clip(real + 0.3 * rng.normal(size=real.shape), -1, 1)
    yield "test digits + Gaussian noise (sigma 1.0)", np.clip(real + 1.0 * rng.normal(size=real.shape), -1, 1)
    yield "test digits shifted by 4 pixels", np.roll(real, (4, 4), axis=(1, 2))
    yield "one digit class only (all 1s)", ev.test_m11[ev.test_labels == 1][:n]
    yield "pure uniform noise", rng.uniform(-1, 1, size=real.shape)


def main(argv=None) -> int:
    import numpy as np

    from helpers.config import quick, quick_cap
    from helpers.metrics import get_evaluator

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    args.n = quick_cap(args.n, 200)  # a quick check (helpers.config.QUICK_VARIABLE): small sets, the code runs
    ev = get_evaluator(quick=quick())
    rows = []
    for name, x in cases(ev, args.n, np.random.default_rng(0)):
        f = ev.evaluate(np.asarray(x, np.float32))
        f["case"] = name
        rows.append(f)
        print(json.dumps(f), flush=True)
    if args.markdown:
        print(f"\n| samples (N = {args.n}) | Frechet distance | confidence > 0.9 | class shares min / max | "
              f"KL from uniform | precision / recall | nearest-train distance |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for f in rows:
            print(f"| {f['case']} | {f['frechet_distance']:.2f} | {f['confident_share']:.3f} | "
                  f"{f['min_class_share']:.3f} / {f['max_class_share']:.3f} | {f['class_kl_from_uniform']:.3f} | "
                  f"{f['precision']:.3f} / {f['recall']:.3f} | {f['nn_train_distance']:.2f} |")
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu()  # before JAX starts; may restart this script once (helpers.environment)
    sys.exit(main())
