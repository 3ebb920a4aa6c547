"""Training speed on one machine: one process against several (JAX's multi-controller runtime).

    python benchmarks/processes.py                        # cpu preset, 300 steps: 1 process, 1 process x 2 devices, 2 processes
    python benchmarks/processes.py --steps 500 --rounds 2 --preset cpu

Each layout trains the same run with `scripts/train.py` (no sampling, no evaluation) in a fresh folder:
one process with one device; one process with two CPU devices (`--xla_force_host_platform_device_count=2`);
two processes with one device each, joined on 127.0.0.1 (gloo). The figure is the median images/s of the
history's chunks after the first (which includes compilation). With `--rounds R` the layouts are
interleaved R times, so a change in the machine's speed touches all of them alike. Prints a table and
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {"1 process, 1 device": (1, 1), "1 process, 2 devices": (1, 2), "2 processes, 1 device each": (2, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(out: Path, processes: int, devices: int, flags: list[str]) -> float:
    """Median images/s of one run of the layout (chunks after the first)."""
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                                      f"--xla_force_host_platform_device_count={devices}".strip()}
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--out", str(out), "--no-progress", "--no-evaluate",
           "--num-samples", "16", *flags]
    port = free_port()
    procs = [subprocess.Popen(cmd + (["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                                      "--process-id", str(i)] if processes > 1 else []),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"error: {' '.join(cmd)} failed (exit {p.returncode}):\n{err[-2000:]}")
    history, chunk = json.loads((out / "history.json").read_text()), json.loads((out / "config.json").read_text())["log_every"]
    rates = [r for step, r in zip(history["step"], history["images_per_s"]) if step % chunk == 0 and step > 0]
    return round(statistics.median(rates), 1)  # one figure per chunk, the first one (compilation) left out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--manual-dir", default=None)
    args = p.parse_args(argv)
    if args.steps < 100 or args.rounds < 1:
        p.error("--steps must be at least 100 (two chunks and more) and --rounds at least 1")
    flags = ["--preset", args.preset, "--max-steps", str(args.steps)]
    flags += [a for k in ("data_dir", "manual_dir") if getattr(args, k) for a in (f"--{k.replace('_', '-')}", getattr(args, k))]
    figures = {name: [] for name in LAYOUTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, (processes, devices)) in enumerate(LAYOUTS.items()):
                figures[name].append(train(Path(tmp) / f"{r}-{i}", processes, devices, flags))
                print(f"round {r + 1}: {name:28s} {figures[name][-1]:8.1f} images/s", flush=True)
    from helpers.environment import machine_description

    print(json.dumps({"preset": args.preset, "steps": args.steps, "machine": machine_description(),
                      "images_per_s": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
