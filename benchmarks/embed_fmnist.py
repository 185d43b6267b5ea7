"""``clinfo-ray embed`` on Fashion-MNIST: images/s, and the driver's and workers' peak memory at
10,000 images (the test split) and at all 70,000 (every split), in one run.

Prepares the whole set once (``clinfo-ray prepare fashion-mnist``: needs
``apt-get install -y dataset-fashion-mnist``) and saves a small checkpoint (the quickstart's
network, small_cnn of width 16, D = 128, randomly initialised: throughput does not depend on the
weights) at 28 px. Each measurement runs the command in a fresh process that starts its own local
Ray, as a user would; meanwhile this process samples, every ``--interval`` seconds, the resident
memory of that driver and of every Ray worker process under it (``ray::`` in its command line:
decode and write tasks, the encoder actors). Reported: images/s over the write (the manifest's
``seconds``: Ray start-up excluded) and over the whole command; the driver's peak resident set
(its kernel high-water mark, VmHWM); the largest worker's peak and the workers' peak total.
The goal: driver memory flat in the number of images (the ratio of its peaks at 70,000 and
10,000 near 1). Linux only (/proc).

    nice -n 10 python benchmarks/embed_fmnist.py [--work /tmp/embed_fmnist] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from clinfo_ray.checkpointing import save_checkpoint
from clinfo_ray.config import DataConfig, ModelConfig, PrepareConfig, TrainConfig
from clinfo_ray.data.manifest import read_manifest
from clinfo_ray.model import build_model

MIB = 2**20
FMNIST = "/usr/share/datasets/fashion-mnist"


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in bytes (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = [line.split() for line in f if line.startswith(("VmRSS", "VmHWM"))]
    except OSError:
        return {}
    return {key.rstrip(":"): int(value) * 1024 for key, value, *_ in lines}


def _descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process under ``root``."""
    parent, cmd = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [root]
    while frontier:
        up = frontier.pop()
        kids = [pid for pid, ppid in parent.items() if ppid == up]
        found += [(pid, cmd.get(pid, "")) for pid in kids]
        frontier += kids
    return found


class Sampler(threading.Thread):
    """Peaks of a driver process and of the Ray workers under it, sampled until stopped."""

    def __init__(self, driver: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.driver, self.interval = driver, interval
        self.driver_hwm = self.driver_rss = self.worker_max = self.workers_total = 0
        self.driver_samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while not self.stop.is_set():
            mine = _status(self.driver)
            if mine:
                self.driver_hwm = max(self.driver_hwm, mine.get("VmHWM", 0))
                self.driver_rss = max(self.driver_rss, mine.get("VmRSS", 0))
                self.driver_samples.append((time.perf_counter() - started, mine["VmRSS"]))
            total = 0
            for pid, cmd in _descendants(self.driver):
                if cmd.startswith("ray::"):
                    status = _status(pid)
                    self.worker_max = max(self.worker_max, status.get("VmHWM", 0))
                    total += status.get("VmRSS", 0)
            self.workers_total = max(self.workers_total, total)
            self.stop.wait(self.interval)


def prepare_dataset(work: Path) -> Path:
    """All 70,000 Fashion-MNIST images as a clinfo-ray dataset (once)."""
    out = work / "fmnist"
    if (out / "manifest.json").is_file():
        return out
    import ray

    from clinfo_ray.data.write.prepare import prepare

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
    try:
        prepare(PrepareConfig(source="fashion-mnist", images=FMNIST, out=str(out)))
    finally:
        ray.shutdown()
    return out


def small_checkpoint(work: Path, dataset: Path) -> Path:
    torch.manual_seed(0)
    cfg = TrainConfig(
        data=DataConfig(dataset_dir=str(dataset), image_size=28),
        model=ModelConfig(backbone="small_cnn", small_image_stem=True, cnn_width=16),
    )
    return save_checkpoint(
        work / "checkpoint", model=build_model(cfg.model), epoch=0, step=0, config=cfg
    )


def measure(argv: list[str], out: Path, log: Path, interval: float) -> dict[str, Any]:
    """Run ``clinfo-ray embed ARGV --out OUT`` in a fresh process; its numbers."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "clinfo_ray", "embed", *argv, "--out", str(out)]
    started = time.perf_counter()
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        sampler = Sampler(process.pid, interval)
        sampler.start()
        code = process.wait()
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"embed failed ({code}); see {log}")
    manifest = json.loads((out / "manifest.json").read_text())
    images = sum(manifest["rows"].values())
    return {
        "images": images,
        "write_s": manifest["seconds"],
        "wall_s": wall,
        "images_per_s": images / manifest["seconds"],
        "images_per_s_wall": images / wall,
        "driver_peak_mib": sampler.driver_hwm / MIB,
        "driver_peak_rss_sampled_mib": sampler.driver_rss / MIB,
        "worker_peak_mib": sampler.worker_max / MIB,
        "workers_total_peak_mib": sampler.workers_total / MIB,
        "skipped": manifest["skipped_undecodable"],
        "files": len(manifest["files"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/embed_fmnist"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--interval", type=float, default=0.25, help="sampling period, s")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = prepare_dataset(args.work)
    print("dataset:", read_manifest(dataset).rows, flush=True)
    checkpoint = small_checkpoint(args.work, dataset)
    common = ["--checkpoint", str(checkpoint), "--data", str(dataset)]
    common += ["--device", "cpu", "--batch-size", str(args.batch_size)]
    results: dict[str, dict[str, Any]] = {}
    for name, extra in (("10,000 (test)", ["--splits", "test"]), ("70,000 (all)", [])):
        log = args.work / f"embed_{len(results)}.log"
        results[name] = measure([*common, *extra], args.work / "out", log, args.interval)
        print(name, json.dumps(results[name]), flush=True)
    print(f"\nmachine: {os.cpu_count()} cores; torch {torch.__version__}")
    print(
        "| images | images/s (write) | images/s (command) | driver peak MiB | "
        "largest worker peak MiB | workers' total peak MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results.values():
        print(
            f"| {r['images']:,} | {r['images_per_s']:.0f} | {r['images_per_s_wall']:.0f} | "
            f"{r['driver_peak_mib']:.0f} | {r['worker_peak_mib']:.0f} | "
            f"{r['workers_total_peak_mib']:.0f} |"
        )
    small, large = results.values()
    ratio = large["driver_peak_mib"] / small["driver_peak_mib"]
    print(f"\ndriver peak at 70,000 / at 10,000: {ratio:.3f} (images x7)")


if __name__ == "__main__":
    main()
