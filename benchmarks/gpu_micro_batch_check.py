"""Gradient caching on CUDA (data.micro_batch_size): the gradients of one graph over the same
micro-batches, as tests/test_micro_batch.py checks on the CPU.

* float64, every loss.method, dropout drawn from the CUDA generator (replayed), BatchNorm
  running statistics: largest relative gradient error and buffer error, goal <= 1e-6;
* float32 under bf16 autocast (optim.amp), simclr: relative gradient error, goal <= 2e-2.

Needs only torch (the GPU machine has no Ray); run by benchmarks/gpu_check.sh:

    python3 benchmarks/gpu_micro_batch_check.py --device cuda
"""

from __future__ import annotations

import argparse
import json

import torch

from clinfo_ray.config import apply_overrides
from clinfo_ray.training.objective import backward_batch
from tests.micro_batch_reference import (
    METHODS,
    batch_of,
    buffers,
    config,
    gradients,
    module_of,
    one_graph_backward,
)

BATCH, MICRO = 16, 4
GOALS = {"float64": 1e-6, "bf16": 2e-2}


def _relative(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    if got.keys() != want.keys():
        return float("inf")
    errors = [
        float((got[k].double() - w.double()).abs().max() / w.double().abs().max().clamp(min=1e-12))
        for k, w in want.items()
    ]
    return max(errors)


def compare(method: str, device: torch.device, amp: bool) -> dict[str, float]:
    """Gradient caching against the one graph for one method: relative errors."""
    cfg = config(method, BATCH, MICRO)
    dtype = torch.float32 if amp else torch.float64
    if amp:
        cfg = apply_overrides(cfg, {"optim.amp": True, "run.device": "gpu"})
    batch, prototypes = batch_of(cfg, BATCH, dtype=dtype)
    batch = {k: v.to(device) for k, v in batch.items()}
    prototypes = None if prototypes is None else prototypes.to(device)
    cached, reference = module_of(cfg, dtype).to(device), module_of(cfg, dtype).to(device)
    torch.manual_seed(7)  # the dropout masks: CUDA's generator
    loss = backward_batch(cached, cfg, batch, prototypes)
    torch.manual_seed(7)
    want = one_graph_backward(reference, cfg, batch, prototypes, MICRO)
    return {
        "loss_rel_err": float((loss - want).abs() / want.abs()),
        "grad_rel_err": _relative(gradients(cached), gradients(reference)),
        "buffer_rel_err": _relative(buffers(cached), buffers(reference)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(parser.parse_args().device)
    results = {f"{m} float64": compare(m, device, amp=False) for m in METHODS}
    results["simclr bf16"] = compare("simclr", device, amp=True)
    ok = True
    for name, errors in results.items():
        goal = GOALS["bf16" if name.endswith("bf16") else "float64"]
        worst = max(errors.values())
        ok &= worst <= goal
        print(f"micro-batch {name} on {device}: relative error {worst:.1e} (goal: <= {goal:g})")
    print(json.dumps(results, indent=2))
    print("MICRO-BATCH CHECK", "PASSED" if ok else "FAILED")


if __name__ == "__main__":
    main()
