"""Peak memory and time of one training step at a fixed global batch, with and without
``data.micro_batch_size`` (gradient caching, clinfo_ray/training/grad_cache.py), issue 22.

Four variants, each in a fresh process of its own (separate peaks), on random views (no Ray,
one process: one worker's step, the same ``train_step`` as the Ray workers run):

* ``one pass``: the batch of B images in one pass (data.micro_batch_size null);
* ``micro-batches``: the same batch in micro-batches of m (gradient caching);
* ``micro-batches, one graph``: the same micro-batches with every graph kept, one backward
  (the function gradient caching computes; tests/micro_batch_reference.py): the time of the
  micro-batches without the recomputation, at one pass's memory;
* ``micro-batch alone``: a batch of m images in one pass: the memory level of one micro-batch.

Memory: on the CPU the process's peak resident set (VmHWM) and the step's share of it (VmHWM
less the resident set just before the first step: model, optimiser and batch already there);
on CUDA ``torch.cuda.max_memory_allocated`` and the same difference. Time: the median of the
timed steps after one untimed step (allocation, kernel choice), wall-clock and, on the CPU, the
process's CPU time (all threads: on a shared machine the wall time depends on the others).
Goals (issue 22): time of the micro-batches <= 1.4 x one pass; their step memory at the
micro-batch's level (here: <= 1.5 x the micro-batch alone).

    python benchmarks/micro_batch_memory.py --backbone resnet18 --image-size 64 \\
        --batch 256 --micro 32 --steps 1
    python3 benchmarks/micro_batch_memory.py --device cuda --backbone resnet50 --amp  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TIME_GOAL = 1.4  # micro-batches / one pass
MEMORY_GOAL = 1.5  # step memory of the micro-batches / the micro-batch alone ("its level")
# variant -> (images per step: "batch" or "micro", micro_batch_size: None or "micro", one graph)
VARIANTS: dict[str, tuple[str, str | None, bool]] = {
    "one pass": ("batch", None, False),
    "micro-batches": ("batch", "micro", False),
    "micro-batches, one graph": ("batch", "micro", True),
    "micro-batch alone": ("micro", None, False),
}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(args: argparse.Namespace, batch: int, micro: int | None, one_graph: bool) -> dict:
    """One variant's steps: seconds and memory (MiB)."""
    import torch

    from clinfo_ray.config import TrainConfig
    from clinfo_ray.model import build_model
    from clinfo_ray.optim import build_optimizer
    from clinfo_ray.training.objective import TrainModule, train_step
    from tests.micro_batch_reference import one_graph_backward

    cuda = args.device == "cuda"
    cfg = TrainConfig.from_dict(
        {
            "data": {
                "image_size": args.image_size,
                "batch_size_per_worker": batch,
                "micro_batch_size": None if one_graph else micro,
            },
            "model": {"backbone": args.backbone, "small_image_stem": args.small_stem},
            "loss": {"method": "simclr"},
            "optim": {"amp": args.amp, "warmup_epochs": 0.0},
            "run": {"device": "gpu" if cuda else "cpu"},
        }
    )
    torch.manual_seed(0)
    device = torch.device(args.device)
    module = TrainModule(build_model(cfg.model), None).to(device)
    optimizer, scheduler = build_optimizer(module, cfg.optim, args.steps + 1)
    gen = torch.Generator().manual_seed(1)
    size = args.image_size
    step_batch = {
        "views": torch.rand(batch, 2, 3, size, size, generator=gen).to(device),  # (B, V, 3, S, S)
        "index": torch.arange(batch, device=device),
        "label": torch.zeros(batch, dtype=torch.int64, device=device),
        "cluster": torch.arange(batch, device=device),
    }

    def step() -> None:
        if not one_graph:
            train_step(module, cfg, step_batch, optimizer, scheduler)
            return
        optimizer.zero_grad(set_to_none=True)
        one_graph_backward(module, cfg, step_batch, None, micro or batch)
        optimizer.step()
        scheduler.step()

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _status_kib("VmRSS") * 1024
    seconds, cpu_seconds = [], []
    for i in range(args.steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i > 0:  # the first step allocates (optimiser state, kernel choice): not timed
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
    return {
        "batch": batch,
        "micro": micro,
        "seconds_per_step": statistics.median(seconds),
        "cpu_seconds_per_step": statistics.median(cpu_seconds),
        "peak_mib": peak / 2**20,
        "step_mib": (peak - before) / 2**20,
        "memory": "cuda max_memory_allocated" if cuda else "peak RSS (VmHWM)",
    }


def _run_variant(args: argparse.Namespace, name: str) -> dict[str, Any]:
    images, micro, one_graph = VARIANTS[name]
    shape = [str(getattr(args, images)), str(args.micro if micro else 0), str(int(one_graph))]
    command = [sys.executable, __file__, "--child", *shape, *_shared(args)]
    root = str(Path(__file__).resolve().parents[1])  # tests.micro_batch_reference
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, _pythonpath()]))}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"variant {name!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pythonpath() -> str:
    return os.environ.get("PYTHONPATH", "")


def _shared(args: argparse.Namespace) -> list[str]:
    flags = [
        f"--device={args.device}",
        f"--backbone={args.backbone}",
        f"--image-size={args.image_size}",
        f"--steps={args.steps}",
    ]
    return flags + ["--small-stem"] * args.small_stem + ["--amp"] * args.amp


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    print("| variant | images/step | micro | s/step | CPU s/step | peak MiB | step MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['batch']} | {r['micro'] or '-'} | {r['seconds_per_step']:.2f} | "
            f"{r['cpu_seconds_per_step']:.2f} | {r['peak_mib']:,.0f} | {r['step_mib']:,.0f} |"
        )
    one, micro, graph, alone = (results[k] for k in VARIANTS)
    print(f"memory: {one['memory']}")
    clocks = ["seconds_per_step"] + ["cpu_seconds_per_step"] * (args.device == "cpu")
    for clock in clocks:
        ratio = micro[clock] / one[clock]
        print(f"{clock}, micro-batches / one pass: {ratio:.2f} (goal: <= {TIME_GOAL})")
        ratio = micro[clock] / graph[clock]
        print(f"{clock}, micro-batches / the same micro-batches in one graph: {ratio:.2f}")
    print(f"step memory, micro-batches / one pass: {micro['step_mib'] / one['step_mib']:.2f}")
    level = micro["step_mib"] / alone["step_mib"]
    print(f"step memory, micro-batches / micro-batch alone: {level:.2f} (goal: <= {MEMORY_GOAL})")
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--small-stem", action="store_true", help="3x3 stride-1 stem, no pool")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--batch", type=int, default=256, help="images per step (2 views)")
    parser.add_argument("--micro", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1, help="timed steps after one untimed")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        batch, micro, one_graph = args.child
        print(json.dumps(child(args, batch, micro or None, bool(one_graph))))
        return
    report(args, {name: _run_variant(args, name) for name in VARIANTS})


if __name__ == "__main__":
    main()
