#!/usr/bin/env bash
# The GPU checks, one prepared script for a lent GPU machine (keep it under 8 minutes):
#   1. the loss on CUDA against the float64 CPU reference, and a short bf16 AMP training;
#   2. the loss benchmark at large batches (dense only while it fits);
#   3. a short ResNet-50 bf16 training on the prepared emoji Parquet (images/s, peak memory);
#   4. micro-batches (data.micro_batch_size): gradients against one graph on CUDA, then CUDA
#      memory and time of a step with and without them (the gpu_resnet50 setting);
#   5. export and embed on CUDA: the exported encoder against the checkpoint's, both as the
#      embed command's actors load them, and images/s.
# Each figure is printed beside its goal. The machine has PyTorch but no Ray and no network:
# these parts need only torch, pyarrow, Pillow and (5) safetensors. Before the call, copy the
# prepared set into the ignored .gpu_data/ and carry it; if the machine lacks safetensors,
# install it into .gpu_data/pkgs for its Python and carry that too:
#   mkdir -p .gpu_data && cp -r data/emoji .gpu_data/   # then run(..., carry=[".gpu_data"])
# Output goes to $OUT (when set) for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .gpu_data/pkgs ]; then export PYTHONPATH="$PYTHONPATH:$PWD/.gpu_data/pkgs"; fi
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
    status=1
fi
python3 benchmarks/gpu_micro_batch_check.py --device cuda \
    | tee "$out/gpu_micro_batch_check.txt" || status=1
python3 benchmarks/micro_batch_memory.py --device cuda --backbone resnet50 --image-size 32 \
    --small-stem --amp --batch 1024 --micro 128 --steps 5 \
    | tee "$out/micro_batch_memory_gpu.md" || status=1
python3 benchmarks/gpu_export_check.py --device cuda --work "$out/export_check" \
    | tee "$out/gpu_export_check.txt" || status=1
rm -rf "$out/export_check"
exit "${status:-0}"
