"""Side by side with the PyTorch reference (../shared/bench/torch_ddpm): same models, same machine,
back to back in one run, printed as ratios.

    python benchmarks/compare_torch.py --torch-python ../shared/bench/torch_ddpm/.venv-torch/bin/python

Set the reference up first (its README): `python3 -m venv .venv-torch && .venv-torch/bin/pip
install torch==2.13.0 numpy diffusers`. For each model size (the reference's `--small`, 32/64/128
with 1 block, and its default, the reference tutorial's 64/128/256 with 2 blocks; both with
attention at 8x8, GELU, Huber loss, epsilon prediction, fp32, batch 128) it times the train step of
both, then DDIM-100 sampling of 64 digits, and prints one JSON line and a table with the ratios
(JAX / PyTorch for images/s; PyTorch / JAX for sampling time: above 1 means JAX is faster).
With `--repeats N` the two run alternately N times and each keeps its best figure (a shared
machine's speed drifts by 20-30% within minutes; every figure is printed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "bench" / "torch_ddpm" / "ddpm_torch.py"

# Our flags for the reference's two models (the `paper` preset is its default model).
MODELS = {
    "small": ["--preset", "paper", "--set", "hidden_dims=32,64,128", "--set", "num_res_blocks=1"],
    "paper": ["--preset", "paper"],
}


def _last_json(text: str) -> dict | None:
    """The last line of `text` that is a JSON object (the benchmarks print their figures that way)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def _run(cmd: list[str]) -> dict:
    """Run one benchmark command; its figures, or SystemExit saying which command failed and how."""
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    figures = _last_json(r.stdout)
    if figures is None:
        raise SystemExit(f"{' '.join(cmd)} printed no JSON line of figures; its output ends:\n"
                         f"{(r.stdout + r.stderr)[-2000:]}")
    return figures


def summarize(torch_ips: list[float], jax_ips: list[float], torch_ddim_s: list[float],
              jax_ddim_s: list[float]) -> dict:
    """Best of each side (most images/s, least sampling time) and the two ratios, with every figure."""
    return {"torch_images_per_s": max(torch_ips), "jax_images_per_s": max(jax_ips),
            "train_ratio": round(max(jax_ips) / max(torch_ips), 2),
            "torch_ddim100_s": min(torch_ddim_s), "jax_ddim100_s": min(jax_ddim_s),
            "sampling_speedup": round(min(torch_ddim_s) / min(jax_ddim_s), 2),
            "all": {"torch_images_per_s": list(torch_ips), "jax_images_per_s": list(jax_ips),
                    "torch_ddim100_s": list(torch_ddim_s), "jax_ddim100_s": list(jax_ddim_s)}}


def format_table(result: dict) -> str:
    """The readable table under the JSON line: one row per model."""
    lines = [f"\n{'model':6s} {'params':>11s} {'torch img/s':>11s} {'JAX img/s':>10s} {'ratio':>6s} "
             f"{'torch DDIM-100 (64)':>20s} {'JAX DDIM-100 (64)':>18s} {'speed-up':>8s}"]
    for name, r in result.items():
        lines.append(f"{name:6s} {r['parameters']:>11,} {r['torch_images_per_s']:>11.1f} "
                     f"{r['jax_images_per_s']:>10.1f} {r['train_ratio']:>6.2f} {r['torch_ddim100_s']:>19.2f}s "
                     f"{r['jax_ddim100_s']:>17.2f}s {r['sampling_speedup']:>8.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch-python", required=True, help="the Python of the reference's virtual environment")
    p.add_argument("--reference", default=str(REFERENCE))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="timed train steps per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=1,
                   help="alternate the two this many times and keep each one's best figure")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    if not Path(args.reference).is_file():
        p.error(f"the reference {args.reference} does not exist")
    torch_python = shutil.which(args.torch_python)
    if torch_python is None:
        p.error(f"--torch-python {args.torch_python} was not found. Set up the reference's environment first "
                f"(its README): python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 numpy "
                f"diffusers, then pass --torch-python .venv-torch/bin/python")
    # The commands run from the repository root: paths given relative to where you are become absolute.
    args.torch_python, args.reference = str(Path(torch_python).absolute()), str(Path(args.reference).resolve())

    result = {}
    for name in args.models:
        small = ["--small"] if name == "small" else []
        ref_ips, ours_ips, ref_ddim, ours_ddim = [], [], [], []
        for _ in range(args.repeats):
            ref = _run([args.torch_python, args.reference, "bench", "--batch", str(args.batch),
                        "--steps", str(args.steps), "--threads", str(args.threads), *small])
            ours = _run([sys.executable, "benchmarks/benchmark.py", *MODELS[name], "--batch", str(args.batch),
                         "--steps", str(args.steps), "--skip-ddpm", "--samples", "64"])
            ref_s = _run([args.torch_python, args.reference, "sample-bench", "--n", "64", "--ddim-steps", "100",
                          "--threads", str(args.threads), *small])
            ref_ips.append(ref["images_per_s"])
            ours_ips.append(ours["images_per_s"])
            ref_ddim.append(ref_s["seconds"])
            ours_ddim.append(ours["ddim100_s_for_64"])
            print(f"{name}: torch {ref_ips[-1]:.1f} img/s, JAX {ours_ips[-1]:.1f} img/s; DDIM-100 of 64: "
                  f"torch {ref_ddim[-1]:.1f} s, JAX {ours_ddim[-1]:.1f} s", file=sys.stderr, flush=True)
        result[name] = summarize(ref_ips, ours_ips, ref_ddim, ours_ddim)
        result[name].update(parameters=ours["parameters"], machine=ours["machine"], repeats=args.repeats)
    print(json.dumps(result))
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
