"""Export and embed on CUDA: a checkpoint's encoder exported (``clinfo-ray export``'s
``export_encoder``) and both loaded the way ``clinfo-ray embed``'s encoder actors load them
(``CheckpointEncoder`` / ``ExportedEncoder``), on the GPU.

Figures, each beside its goal:

* exported program on CUDA against the checkpoint's encoder on CUDA: relative error <= 1e-4
  (the same operations on the same device);
* checkpoint's encoder on CUDA against the same on the CPU in float32: relative error <= 1e-2
  (cuDNN's TF32 convolutions);
* images/s of the exported encoder on CUDA at batch 256 (reported, no goal).

Needs torch and safetensors, no Ray; run by benchmarks/gpu_check.sh:

    python3 benchmarks/gpu_export_check.py --device cuda --work /tmp/gpu_export_check
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from clinfo_ray.checkpointing import save_checkpoint
from clinfo_ray.config import TrainConfig
from clinfo_ray.evaluation.encoder_source import CheckpointEncoder, ExportedEncoder
from clinfo_ray.export import export_encoder
from clinfo_ray.model import build_model

GOALS = {"export_vs_checkpoint": 1e-4, "cuda_vs_cpu": 1e-2}


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    diff = (got.double().cpu() - want.double().cpu()).abs().max()
    return float(diff / want.double().abs().max().clamp(min=1e-12))


def run(device: torch.device, work: Path, backbone: str, size: int) -> dict[str, float]:
    shutil.rmtree(work, ignore_errors=True)
    cfg = TrainConfig.from_dict({"data": {"image_size": size}, "model": {"backbone": backbone}})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.train()
    with torch.no_grad():  # BatchNorm running statistics that are not the initial ones
        model(torch.rand(64, 3, size, size))
    checkpoint = save_checkpoint(work / "checkpoint", model=model, epoch=1, step=1, config=cfg)
    export_encoder(checkpoint, work / "export")
    images = torch.rand(256, 3, size, size, generator=torch.Generator().manual_seed(1))
    from_checkpoint = CheckpointEncoder.checked(checkpoint).load(device)
    exported = ExportedEncoder.checked(work / "export").load(device)
    cpu = CheckpointEncoder.checked(checkpoint).load(torch.device("cpu"))
    on_device = images.to(device)
    with torch.inference_mode():
        want = from_checkpoint(on_device)
        got = exported(on_device)
        reference = cpu(images)
        exported(on_device)  # warm-up before timing
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, repeats = time.perf_counter(), 10
        for _ in range(repeats):
            exported(on_device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {
        "export_vs_checkpoint": _relative(got, want),
        "cuda_vs_cpu": _relative(want, reference),
        "exported_images_per_s": repeats * len(images) / seconds,
        "feature_dim": float(got.shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_export_check"))
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    result = run(device, args.work, args.backbone, args.image_size)
    ok = True
    for name, goal in GOALS.items():
        ok &= result[name] <= goal
        print(f"{name} ({args.backbone}, {device}): {result[name]:.1e} (goal: <= {goal:g})")
    print(
        f"exported encoder on {device}: {result['exported_images_per_s']:,.0f} images/s (no goal)"
    )
    print(json.dumps({"device": str(device), "backbone": args.backbone, **result}, indent=2))
    print("EXPORT/EMBED CHECK", "PASSED" if ok else "FAILED")


if __name__ == "__main__":
    main()
