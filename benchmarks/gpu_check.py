"""GPU checks of the loss: CUDA against the float64 CPU reference, and a short bf16 AMP training.

Needs only torch (the GPU machine has no Ray); run by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import json
import time

import torch
from torch import nn

from clinfo_ray.losses import cl_infonce


def check_against_cpu_float64() -> dict[str, float]:
    """Value and gradient on CUDA (float32) against the same loss in float64 on the CPU."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 2, 128, generator=gen)
    ids = torch.randint(0, 300, (2048,), generator=gen)
    ref_x = x.double().requires_grad_(True)
    ref = cl_infonce(ref_x, ids, 0.1)
    ref.backward()
    gpu_x = x.cuda().requires_grad_(True)
    got = cl_infonce(gpu_x, ids.cuda(), 0.1, chunk_rows=512)
    got.backward()
    grad_err = (gpu_x.grad.cpu().double() - ref_x.grad).abs().max() / ref_x.grad.abs().max()
    return {
        "loss_rel_err": abs(got.item() - ref.item()) / abs(ref.item()),
        "grad_rel_err": float(grad_err),
    }


def amp_training(steps: int = 30) -> dict[str, float]:
    """A small MLP encoder trained with Cl-InfoNCE under bf16 autocast: the loss must fall."""
    torch.manual_seed(0)
    centres = torch.randn(64, 256, device="cuda")
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 128)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        ids = torch.randint(0, 64, (4096,), device="cuda")
        views = centres[ids][:, None] + 0.5 * torch.randn(4096, 2, 256, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            feats = model(views.flatten(0, 1)).view(4096, 2, -1)
            loss = cl_infonce(feats, ids, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.cuda.synchronize()
    return {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "finite": float(all(map(lambda v: v == v and abs(v) != float("inf"), losses))),
        "ms_per_step": (time.perf_counter() - start) * 1e3 / steps,
    }


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()} torch {torch.__version__}")
    result = {"cuda_vs_cpu_float64": check_against_cpu_float64(), "amp_training": amp_training()}
    print(json.dumps(result, indent=2))
    exact, amp = result["cuda_vs_cpu_float64"], result["amp_training"]
    print(f"loss on CUDA vs float64 CPU: relative error {exact['loss_rel_err']:.1e} (goal: < 1e-5)")
    print(f"bf16 training: loss {amp['first_loss']:.3f} -> {amp['last_loss']:.3f} (goal: falls)")
    ok = exact["loss_rel_err"] < 1e-5
    ok &= amp["last_loss"] < amp["first_loss"]
    print("GPU CHECK", "PASSED" if ok else "FAILED")


if __name__ == "__main__":
    main()
