"""Training images/s: Ray Train with 1 and 2 workers against a plain single-process loop.

Same model (the config's), same global batch, same data (the train split of a prepared set,
decoded once), same augmentation (``ViewAugmentation``, 2 views), same loss. The plain loop
augments in its own process. Ray Train runs each input path of ``data.cache`` /
``data.augment_on`` (see ``VARIANTS``): the split held by every worker (``cache=worker``), or
streamed by Ray Data each epoch from the object store, augmented on the worker or in Ray Data's
tasks. "images/s in epochs" is the mean over the epochs after the first (warm-up), as the
training logs it; "wall" divides the images of epochs 2..N by the time from the end of epoch 1
to the end of epoch N, so it also pays for checkpoints, reports and the start of each epoch.
"input s/epoch" is the time the worker spent getting its batches. The plain loop runs once
before Ray starts and then once per repeat, just before that repeat's Ray runs, with Ray idle in
the background; each Ray run is divided by its own repeat's plain loop. Images are decoded at
``data.decode_size`` (resolved as training does: 2 x image_size capped by the source) by the
plain loop and by Ray Train alike; ``data.val_fraction`` is 0 so both train on the whole split.
``--variants`` picks some of ``VARIANTS`` by key (default: all but the ``cache=none`` one).

    python benchmarks/train_bench.py --data data/emoji --epochs 5
    python benchmarks/train_bench.py --data data/emoji --variants store-worker,store-ray,none-ray
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from clinfo_ray.config import TrainConfig, load_config
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import split_files
from clinfo_ray.data.read.decode import decode_batch
from clinfo_ray.model import build_model
from clinfo_ray.optim import build_optimizer
from clinfo_ray.training.launch import resolve_decode_size
from clinfo_ray.training.objective import TrainModule, augmentation_of, train_step


def plain_loop(cfg: TrainConfig, epochs: int) -> list[float]:
    """Images/s of each epoch of a single-process loop over the decoded train split."""
    table = pq.read_table(split_files(cfg.data.dataset_dir, C.TRAIN), columns=[C.IMAGE])
    images, ok, _ = decode_batch(table.column(C.IMAGE).to_pylist(), cfg.data.decode_side_bound)
    pixels = torch.from_numpy(np.ascontiguousarray(images[ok]))  # (n, 3, D, D) uint8, D decode
    batch = cfg.global_batch_size
    steps = len(pixels) // batch
    augment = augmentation_of(cfg)
    torch.manual_seed(cfg.run.seed)
    module = TrainModule(build_model(cfg.model), None)
    optimizer, scheduler = build_optimizer(module, cfg.optim, steps)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(pixels))
        for i in range(steps):
            index = order[i * batch : (i + 1) * batch]
            views = augment(pixels[index], dtype=torch.float32)
            step_batch = {"views": views, "index": index, "cluster": index, "label": index}
            train_step(module, cfg, step_batch, optimizer, scheduler)
        rates.append(steps * batch / (time.perf_counter() - start))
    return rates


# key -> (name, workers, overrides): the config's own input path, then the streamed ones.
VARIANTS = {
    "worker-1": (
        "Ray Train, 1 worker, cache=worker",
        1,
        {"data.cache": "worker", "data.augment_on": "worker"},
    ),
    "worker-2": (
        "Ray Train, 2 workers, cache=worker",
        2,
        {"data.cache": "worker", "data.augment_on": "worker"},
    ),
    "store-worker": (
        "Ray Train, 1 worker, cache=object_store, augment in worker",
        1,
        {"data.cache": "object_store", "data.augment_on": "worker"},
    ),
    "store-ray": (
        "Ray Train, 1 worker, cache=object_store, augment in Ray Data",
        1,
        {"data.cache": "object_store", "data.augment_on": "ray_data"},
    ),
    "none-ray": (
        "Ray Train, 1 worker, cache=none, augment in Ray Data",
        1,
        {"data.cache": "none", "data.augment_on": "ray_data"},
    ),
}
DEFAULT_VARIANTS = "worker-1,worker-2,store-worker,store-ray"


def ray_train(
    cfg: TrainConfig, workers: int, overrides: dict, out: Path, name: str
) -> tuple[list[float], float, list[float]]:
    """(images/s of each epoch, wall images/s of epochs 2..N, input seconds of each epoch) of
    ``train`` with ``workers`` workers, from metrics.jsonl. The wall rate counts everything
    between the end of epoch 1 and the end of epoch N: checkpoints, reports, epoch start-up."""
    from clinfo_ray.config import apply_overrides
    from clinfo_ray.training.launch import train

    run = apply_overrides(
        cfg,
        {
            "run.num_workers": workers,
            "run.cpus_per_worker": 2.0 / workers,
            "data.batch_size_per_worker": cfg.global_batch_size // workers,
            "run.name": name,
            "run.output_dir": str(out),
            **overrides,
        },
    )
    outcome = train(run)
    records = [json.loads(line) for line in (outcome.run_dir / "metrics.jsonl").open()]
    epochs = [r for r in records if r["event"] == "epoch"]
    images = (epochs[-1]["step"] - epochs[0]["step"]) * run.global_batch_size
    wall = images / (epochs[-1]["time"] - epochs[0]["time"])
    return (
        [r["train/images_per_s"] for r in epochs],
        wall,
        [r["train/input_seconds"] for r in epochs],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each loop; medians shown")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    keys = args.variants.split(",")
    unknown = set(keys) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}, expected some of {list(VARIANTS)}")
    variants = [VARIANTS[k] for k in keys]
    cfg = load_config(
        args.config,
        [
            f"data.dataset_dir={args.data}",
            f"optim.epochs={args.epochs}",
            "optim.warmup_epochs=1",
            "eval.knn_every=0",
            "loss.method=simclr",
            "data.val_fraction=0",
            *args.overrides,
        ],
    )
    cfg = resolve_decode_size(cfg)  # the plain loop decodes at the size training uses
    before_ray = statistics.mean(plain_loop(cfg, args.epochs)[1:])
    print(f"plain loop before Ray started: {before_ray:.0f} images/s", flush=True)
    from clinfo_ray.commands.common import connect_ray

    connect_ray(cpus_needed=cfg.run.num_workers * cfg.run.cpus_per_worker)
    out = Path(tempfile.mkdtemp(prefix="train_bench_"))
    # Each repeat runs the plain loop (Ray idle meanwhile) and then every variant, and each
    # variant is compared with its own repeat's plain loop: the machine's slow spells (this VM
    # drifts by 20 % over minutes) then hit both sides of a ratio.
    plain: list[float] = []
    runs: dict[int, list[tuple[float, float, float, float]]] = {i: [] for i in range(len(variants))}
    try:
        for repeat in range(args.repeats):
            plain.append(statistics.mean(plain_loop(cfg, args.epochs)[1:]))
            print(f"plain loop, run {repeat + 1}: {plain[-1]:.0f}", flush=True)
            for i, (name, workers, overrides) in enumerate(variants):
                rates, wall, waits = ray_train(cfg, workers, overrides, out, f"b{i}-{repeat}")
                rate = statistics.mean(rates[1:])
                runs[i].append(
                    (rate, rate / plain[-1], wall / plain[-1], statistics.mean(waits[1:]))
                )
                print(f"{name}, run {repeat + 1}: {rate:.0f} ({rate / plain[-1]:.2f}×)", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(
        f"model={cfg.model.backbone} width={cfg.model.cnn_width} size={cfg.data.image_size} "
        f"decode={cfg.data.decode_size} global batch={cfg.global_batch_size} "
        f"views={cfg.data.views} epochs={args.epochs} "
        f"repeats={args.repeats}; medians over the repeats"
    )
    print("| loop | images/s in epochs 2..N | vs plain | wall vs plain | input s/epoch |")
    print("|---|---:|---:|---:|---:|")
    print(f"| plain loop (1 process), before Ray started | {before_ray:.0f} | | | |")
    print(f"| plain loop (1 process), Ray idle | {statistics.median(plain):.0f} | 1.00× | | |")
    for i, (name, _, _) in enumerate(variants):
        rate, ratio, wall, wait = (statistics.median(col) for col in zip(*runs[i], strict=True))
        print(f"| {name} | {rate:.0f} | {ratio:.2f}× | {wall:.2f}× | {wait:.2f} |")


if __name__ == "__main__":
    main()
