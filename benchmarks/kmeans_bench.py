"""Seconds per iteration of faiss k-means (clinfo_ray.clusters.kmeans.fit_kmeans).

    .venv/bin/python benchmarks/kmeans_bench.py --n 1000000 --d 128 --k 2500 --niter 3

Random Gaussian float32 vectors; every vector is clustered (no subsampling). Prints one Markdown
table row per size: seconds per iteration from faiss's own timings (assignment search + centroid
update; mean and fastest of iterations 2..niter), seeding + the first iteration, and the wall time
of the whole call. OMP_NUM_THREADS sets faiss's threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import typing
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinfo_ray.clusters.kmeans import fit_kmeans
from clinfo_ray.config import Device, KMeansSettings
from clinfo_ray.config.sections import KMeansInit
from clinfo_ray.devices import faiss_uses_gpu


def bench(n: int, d: int, k: int, settings: KMeansSettings) -> dict:
    if settings.niter < 2:
        raise SystemExit("--niter must be >= 2 to time an iteration")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)  # (n, d)
    start = time.perf_counter()
    km = fit_kmeans(x, k, settings)
    wall = time.perf_counter() - start
    # faiss's stats hold seconds since training began (seeding included), one per iteration;
    # the steady state is the mean step between iterations 1..niter
    stats = km.iteration_stats or []
    total = np.array([st["time"] for st in stats])
    search = np.array([st["time_search"] for st in stats])
    iter_s = float(np.diff(total).mean())
    return {
        "n": n,
        "d": d,
        "k": k,
        "niter": settings.niter,
        "init": settings.init,
        "gpu": faiss_uses_gpu(settings.device),
        "s_per_iter": iter_s,
        "search_s_per_iter": float(np.diff(search).mean()),
        "min_s_per_iter": float(np.diff(total).min()),
        "first_iter_s": float(total[0]),  # seeding + the first iteration
        "wall_s": wall,
        "iteration_end_s": total.tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=2500)
    parser.add_argument("--niter", type=int, default=3)
    parser.add_argument("--init", default="afk-mc2", choices=typing.get_args(KMeansInit))
    parser.add_argument("--device", default="auto", choices=typing.get_args(Device))
    args = parser.parse_args(argv)
    settings = KMeansSettings(niter=args.niter, init=args.init, seed=1, device=args.device)
    import faiss

    print(
        f"faiss {faiss.__version__}, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}), "
        f"omp threads {faiss.omp_get_max_threads()}"
    )
    print(
        "| n | d | K | device | threads | s / iteration (mean) | min | of which search "
        "| seeding + 1st iteration s | wall s |"
    )
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.n:
        r = bench(n, args.d, args.k, settings)
        device = "GPU" if r["gpu"] else "CPU"
        print(
            f"| {n:,} | {r['d']} | {r['k']:,} | {device} | {faiss.omp_get_max_threads()} | "
            f"{r['s_per_iter']:.2f} | {r['min_s_per_iter']:.2f} | "
            f"{r['search_s_per_iter']:.2f} | {r['first_iter_s']:.2f} | "
            f"{r['wall_s']:.1f} (niter {r['niter']}) |",
            flush=True,
        )
        print(json.dumps(r), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
