#!/usr/bin/env bash
# One short GPU check of the `paper` preset (the reference tutorial's 50-epoch run): images/s,
# epoch time and the projected 50-epoch time, in fp32 and in bf16 mixed precision, plus sampling.
# Usage (on a machine with an NVIDIA GPU, after `pip install -e ".[cuda]"`):
#     bash benchmarks/gpu_benchmark.sh [OUT_DIR]
# Prints one JSON line per configuration and keeps them in OUT_DIR (default: runs/gpu-benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu-benchmark}"
mkdir -p "$out"
python -c "import jax; print(jax.devices())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for dtype in float32 bfloat16; do
  python benchmarks/benchmark.py --preset paper --set dtype="$dtype" --steps 50 | tee "$out/paper-$dtype.txt"
done
