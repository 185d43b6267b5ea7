"""Cl-InfoNCE forward + backward: time and extra peak memory, chunked (ours) against dense.

Each measurement runs in a fresh subprocess so that one's memory cannot hide in another's peak.
CPU memory is the process's peak resident set (ru_maxrss) minus the resident set just before the
loss, with glibc told to return every large block at once (MALLOC_MMAP_THRESHOLD_), so the peak
is what the loss really held. GPU memory is torch.cuda.max_memory_allocated minus what the inputs
hold. Time is the median of --repeats runs after one warm-up. The "3 matmuls" column times the
three N×N×D products no exact implementation can avoid (the floor of the GPU goal).

    python benchmarks/loss_bench.py                      # CPU: N = 1,024 .. 16,384, D = 128
    python benchmarks/loss_bench.py --device cuda --sizes 4096 16384 65536
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from clinfo_ray.losses import cl_infonce

IMPLEMENTATIONS = ("chunked", "dense")


def dense_cl_infonce(features: torch.Tensor, cluster_ids: torch.Tensor, tau: float) -> torch.Tensor:
    """The usual implementation: full N×N logits, a positive mask and a masked log-softmax."""
    num_images, num_views, _ = features.shape
    z = F.normalize(features.float(), dim=-1).reshape(num_images * num_views, -1)
    ids = cluster_ids.repeat_interleave(num_views)
    logits = z @ z.T / tau  # (N, N)
    self_mask = torch.eye(len(ids), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, -math.inf)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (ids[:, None] == ids[None, :]) & ~self_mask  # (N, N)
    num_pos = positive.sum(1)
    pos_log_prob = log_prob.masked_fill(~positive, 0.0).sum(1)
    valid = num_pos > 0
    return -(pos_log_prob[valid] / num_pos[valid]).mean()


def _inputs(n: int, d: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(n // 2, 2, d, generator=gen).to(device).requires_grad_(True)
    cluster_ids = torch.randint(0, max(2, n // 64), (n // 2,), generator=gen).to(device)
    return features, cluster_ids


def _step(impl: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    def run(features: torch.Tensor, cluster_ids: torch.Tensor) -> None:
        features.grad = None
        if impl == "chunked":
            loss = cl_infonce(features, cluster_ids, 0.1)
        elif impl == "dense":
            loss = dense_cl_infonce(features, cluster_ids, 0.1)
        else:  # "matmul3": the three N×N×D products of any exact fwd+bwd
            z = features.detach().reshape(-1, features.shape[-1])
            for _ in range(3):
                (z @ z.T).sum()
            return
        loss.backward()

    return run


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(impl: str, n: int, d: int, device: str, mode: str, repeats: int) -> dict[str, float]:
    features, cluster_ids = _inputs(n, d, device)
    step = _step(impl)
    if mode == "mem":
        if device == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step(features, cluster_ids)
            torch.cuda.synchronize()
            return {"extra_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
        base = _rss_mib()
        step(features, cluster_ids)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {"extra_mib": peak - base}
    step(features, cluster_ids)  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step(features, cluster_ids)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return {"ms": statistics.median(times)}


def _measure(impl: str, n: int, d: int, device: str, mode: str, repeats: int) -> dict[str, float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if mode == "mem" else None
    cmd = [sys.executable, __file__, "--worker", impl, "--mode", mode, "--device", device]
    cmd += ["--sizes", str(n), "--dim", str(d), "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-max", type=int, default=16384, help="largest N for dense")
    parser.add_argument("--worker", choices=[*IMPLEMENTATIONS, "matmul3"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["time", "mem"], default="time", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.sizes[0], args.dim, args.device, args.mode, args.repeats)
        print(json.dumps(result))
        return
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(
        "| N views | D | implementation | fwd+bwd ms | extra peak MiB | vs dense | vs 3 matmuls |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|")
    for n in args.sizes:
        floor = _measure("matmul3", n, args.dim, args.device, "time", args.repeats)["ms"]
        rows = {}
        for impl in IMPLEMENTATIONS:
            if impl == "dense" and n > args.dense_max:
                continue
            rows[impl] = {
                **_measure(impl, n, args.dim, args.device, "time", args.repeats),
                **_measure(impl, n, args.dim, args.device, "mem", 1),
            }
        for impl, r in rows.items():
            ratio = f"{r['ms'] / rows['dense']['ms']:.2f}×" if "dense" in rows else "–"
            print(
                f"| {n:,} | {args.dim} | {impl} | {r['ms']:.1f} | {r['extra_mib']:.0f} | "
                f"{ratio} | {r['ms'] / floor:.2f}× |",
                flush=True,
            )


if __name__ == "__main__":
    main()
