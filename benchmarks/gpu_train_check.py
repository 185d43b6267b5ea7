"""A short Cl-InfoNCE training without Ray on one device: images/s and peak memory.

For the GPU machine, which has PyTorch but no Ray: the train split of a prepared Parquet set is
decoded once, kept on the device, and each step augments a batch there (``ViewAugmentation``
runs on CUDA tensors), then the same ``train_step`` as the Ray workers (bf16 autocast when
``optim.amp`` and a GPU). Also runs on the CPU (the test suite runs it tiny).

    python3 benchmarks/gpu_train_check.py --data .gpu_data/emoji --device cuda --steps 40
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow.parquet as pq
import torch

from clinfo_ray.config import load_config
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import split_files
from clinfo_ray.data.read.decode import decode_batch
from clinfo_ray.model import build_model
from clinfo_ray.optim import build_optimizer
from clinfo_ray.training.objective import TrainModule, augmentation_of, train_step


def run(config: str, overrides: list[str], device: str, steps: int) -> dict[str, float]:
    cfg = load_config(config, overrides)
    table = pq.read_table(split_files(cfg.data.dataset_dir, C.TRAIN), columns=[C.IMAGE])
    decoded, ok, _ = decode_batch(table.column(C.IMAGE).to_pylist(), cfg.data.image_size)
    pixels = torch.from_numpy(np.ascontiguousarray(decoded[ok])).to(device)  # (n, 3, S, S) u8
    batch = min(cfg.global_batch_size, len(pixels))
    augment = augmentation_of(cfg)
    torch.manual_seed(cfg.run.seed)
    module = TrainModule(build_model(cfg.model), None).to(device)
    optimizer, scheduler = build_optimizer(module, cfg.optim, steps)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, start = [], 0.0
    for step in range(steps + 1):
        if step == 1:  # the first step (allocation, autotuning) is not timed
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        index = torch.randint(0, len(pixels), (batch,), device=device)
        views = augment(pixels[index], dtype=torch.float32)
        step_batch = {"views": views, "index": index, "cluster": index, "label": index}
        losses.append(train_step(module, cfg, step_batch, optimizer, scheduler))
    seconds = time.perf_counter() - start
    return {
        "images_per_s": steps * batch / seconds,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else -1.0,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "all_finite": float(all(np.isfinite(losses))),
        "batch": float(batch),
        "steps": float(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="gpu_resnet50")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    overrides = [f"data.dataset_dir={args.data}", "loss.method=simclr", *args.overrides]
    if args.device == "cuda":
        overrides.append("run.device=gpu")
    result = run(args.config, overrides, args.device, args.steps)
    print(json.dumps({"device": args.device, "config": args.config, **result}, indent=2))


if __name__ == "__main__":
    main()
