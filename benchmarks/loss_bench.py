"""Cl-InfoNCE forward + backward: time and extra peak memory, chunked (ours) against dense.

Each measurement runs in a fresh subprocess so that one's memory cannot hide in another's peak.
CPU memory is the process's peak resident set (ru_maxrss) minus the resident set just before the
loss, with glibc told to return every large block at once (MALLOC_MMAP_THRESHOLD_), so the peak
is what the loss really held. GPU memory is torch.cuda.max_memory_allocated minus what the inputs
hold. Time: the implementations run in alternation, one of each per round, --repeats rounds
after a warm-up, so that a busy machine slows them alike; the table gives the min (the best
estimate of the cost) and the median. The "3 N×N×D matmuls" row times the three products no
exact implementation can avoid (the floor of the GPU goal).

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


def time_interleaved(
    impls: list[str], n: int, d: int, device: str, repeats: int
) -> dict[str, dict[str, float]]:
    """Fwd+bwd ms of each implementation, measured in alternation (one of each per round) so
    that a busy machine slows all of them alike; min and median over ``repeats`` rounds."""
    features, cluster_ids = _inputs(n, d, device)
    steps = {impl: _step(impl) for impl in impls}
    for step in steps.values():  # warm-up
        step(features, cluster_ids)
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step(features, cluster_ids)
            _sync(device)
            times[impl].append((time.perf_counter() - start) * 1e3)
    return {i: {"min_ms": min(t), "median_ms": statistics.median(t)} for i, t in times.items()}


def peak_memory(impl: str, n: int, d: int, device: str) -> dict[str, float]:
    """Extra peak memory of one fwd+bwd, in MiB, over what the inputs hold."""
    features, cluster_ids = _inputs(n, d, device)
    step = _step(impl)
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


def _subprocess(args: list[str], env: dict[str, str] | None = None) -> dict:
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-max", type=int, default=16384, help="largest N for dense")
    parser.add_argument("--memory-of", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--time-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n, d, device = args.sizes[0], args.dim, args.device
    if args.memory_of:
        print(json.dumps(peak_memory(args.memory_of, n, d, device)))
        return
    if args.time_of:
        print(json.dumps(time_interleaved(args.time_of.split(","), n, d, device, args.repeats)))
        return
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(
        "| N views | D | implementation | fwd+bwd ms (min) | median | extra peak MiB | vs dense |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|")
    mem_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for n in args.sizes:
        impls = ["chunked", "matmul3"] + (["dense"] if n <= args.dense_max else [])
        common = ["--sizes", str(n), "--dim", str(d), "--device", device]
        times = _subprocess([*common, "--repeats", str(args.repeats), "--time-of", ",".join(impls)])
        for impl in impls:
            memory = "–"
            if impl != "matmul3":
                mib = _subprocess([*common, "--memory-of", impl], env=mem_env)["extra_mib"]
                memory = f"{mib:.0f}"
            t = times[impl]
            ratio = f"{t['min_ms'] / times['dense']['min_ms']:.2f}×" if "dense" in times else "–"
            name = "3 N×N×D matmuls (floor)" if impl == "matmul3" else impl
            print(
                f"| {n:,} | {d} | {name} | {t['min_ms']:.1f} | {t['median_ms']:.1f} | "
                f"{memory} | {ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
