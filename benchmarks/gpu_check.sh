#!/usr/bin/env bash
# The GPU checks, one prepared script for a lent GPU machine (keep it under 8 minutes):
#   1. the loss on CUDA against the float64 CPU reference, and a short bf16 AMP training;
#   2. the loss benchmark at large batches (dense only while it fits).
# The machine has PyTorch but no Ray: these parts need only torch and the repository.
# Output goes to $OUT (when set) for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 benchmarks/gpu_check.py | tee "$out/gpu_check.txt"
python3 benchmarks/loss_bench.py --device cuda --sizes 4096 16384 32768 65536 \
    --dense-max 32768 --repeats 5 | tee "$out/loss_bench_gpu.md"
