#!/usr/bin/env bash
# The GPU checks, one prepared script for a lent GPU machine (keep it under 8 minutes):
#   1. the loss on CUDA against the float64 CPU reference, and a short bf16 AMP training;
#   2. the loss benchmark at large batches (dense only while it fits);
#   3. a short ResNet-50 bf16 training on the prepared emoji Parquet (images/s, peak memory).
# The machine has PyTorch but no Ray and no network: these parts need only torch, pyarrow and
# Pillow. Before the call, copy the prepared set into the ignored .gpu_data/ and carry it:
#   mkdir -p .gpu_data && cp -r data/emoji .gpu_data/   # then run(..., carry=[".gpu_data"])
# Output goes to $OUT (when set) for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 benchmarks/gpu_check.py | tee "$out/gpu_check.txt"
python3 benchmarks/loss_bench.py --device cuda --sizes 4096 16384 32768 65536 \
    --dense-max 32768 --repeats 5 | tee "$out/loss_bench_gpu.md"
if [ -f .gpu_data/emoji/manifest.json ]; then
    python3 benchmarks/gpu_train_check.py --data .gpu_data/emoji --device cuda --steps 40 \
        | tee "$out/gpu_train_check.json"
else
    echo "no .gpu_data/emoji: training check skipped (carry the prepared emoji set)" >&2
    exit 1
fi
