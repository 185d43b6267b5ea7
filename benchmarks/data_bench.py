"""Images/s of the streamed training input (``StreamPlan``) against a torch DataLoader.

Every loader reads the same Parquet split, decodes with ``decode_batch`` and augments with the
same ``ViewAugmentation`` in batches; the DataLoader uses ``num_workers`` worker processes, the
Ray stream a local Ray with as many CPUs. The Ray modes are ``StreamPlan.build`` (``ray``:
read and decode every epoch; ``ray-cached``: ``cache=True``, decoded once into the object store)
iterated as one rank (``plan.iter_epoch(epoch, rank=0, world=1)``, seeded), once per
``--buffer-batches`` (the worker's local shuffle buffer in batches; 0: none) and per
``--decode-size``. Variants interleave: each round runs ``--epochs`` epochs of every variant in
turn, so the machine's slow spells hit them all. Reports images/s per epoch and the resident
memory (driver plus its child processes) after each epoch; the table shows, per variant, the
median over rounds of each round's mean of its epochs after the first.

    python benchmarks/data_bench.py --data DIR [--epochs 4] [--rounds 1] [--batch-size 256]
        [--cpus 2] [--modes dataloader,ray,ray-cached] [--buffer-batches 4,0]
        [--decode-size 32[,64]] [--size 32]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow.parquet as pq
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import split_files
from clinfo_ray.data.read.augment import ViewAugmentation
from clinfo_ray.data.read.decode import decode_batch
from clinfo_ray.data.read.stream import SHUFFLE_BUFFER_BATCHES, StreamPlan


class ParquetViews(Dataset):
    """Map-style dataset indexed by a list of rows: one call decodes and augments a batch."""

    def __init__(self, files: list[str], decode_size: int, augmentation: ViewAugmentation) -> None:
        table = pq.read_table(files, columns=[C.IMAGE, C.LABEL])
        self.images = table.column(C.IMAGE).combine_chunks()
        self.labels = table.column(C.LABEL).fill_null(-1).to_numpy()
        self.decode_size, self.augmentation = decode_size, augmentation

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        blobs = self.images.take(rows).to_pylist()
        images, ok, _ = decode_batch(blobs, self.decode_size)
        views = self.augmentation(torch.from_numpy(images), dtype=torch.uint8)
        return {"views": views, "label": torch.from_numpy(self.labels[rows][ok])}


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # one loader process per core


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, resident bytes), from /proc (Linux)."""
    page = os.sysconf("SC_PAGE_SIZE")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as f:
                table[int(entry)] = (ppid, int(f.read().split()[1]) * page)
        except (OSError, ValueError, IndexError):
            continue
    return table


def rss_mib() -> float:
    """Resident memory of this process and all its descendants (Ray's raylet and workers)."""
    table = _proc_table()
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in mine]
        mine.update(kids)
        frontier += kids
    return sum(table[p][1] for p in mine if p in table) / 2**20


def timed_epochs(
    name: str, make_epoch: Callable[[int], Iterable[dict]], epochs: range, round_: int
) -> list[dict]:
    out = []
    for epoch in epochs:
        start, n = time.perf_counter(), 0
        for batch in make_epoch(epoch):
            n += batch["views"].shape[0]
        seconds = time.perf_counter() - start
        out.append(
            {
                "loader": name,
                "round": round_,
                "epoch": epoch,
                "images": n,
                "seconds": seconds,
                "images_per_s": n / seconds,
                "rss_mib": rss_mib(),
            }
        )
        print(
            f"{name:>40} round {round_} epoch {epoch}: {n} images {seconds:6.2f} s "
            f"{n / seconds:8.0f} img/s  rss {out[-1]['rss_mib']:.0f} MiB",
            flush=True,
        )
    return out


def make_dataloader(
    args: argparse.Namespace, aug: ViewAugmentation, decode_size: int
) -> tuple[str, Callable[[int], Iterable[dict]]]:
    data = ParquetViews(split_files(args.data, args.split), decode_size, aug)
    sampler = BatchSampler(RandomSampler(data), batch_size=args.batch_size, drop_last=True)
    loader = DataLoader(
        data,
        sampler=sampler,
        batch_size=None,
        num_workers=args.cpus,
        persistent_workers=True,
        prefetch_factor=2,
        worker_init_fn=_one_thread,
        multiprocessing_context="spawn",  # Ray may be running in this process: never fork it
    )
    return f"DataLoader(workers={args.cpus}, decode {decode_size})", lambda _: loader


def make_ray(
    args: argparse.Namespace, aug: ViewAugmentation, cache: bool, decode_size: int, buffer: int
) -> tuple[str, Callable[[int], Iterable[dict]]]:
    plan = StreamPlan.build(
        args.data,
        augmentation=aug,
        split=args.split,
        decode_size=decode_size,
        seed=args.seed,
        cache=cache,
        piece_rows=args.piece_rows,
    )
    name = f"StreamPlan({'cached' if cache else 'uncached'}, decode {decode_size}, buffer {buffer})"

    def epoch(e: int) -> Iterable[dict]:
        return plan.iter_epoch(e, batch_size=args.batch_size, shuffle_buffer_batches=buffer)

    return name, epoch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default=C.TRAIN)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of a variant per round")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians shown")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--decode-size", default="32", help="comma-separated, e.g. 32,64")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--modes", default="dataloader,ray,ray-cached", help=f"of {MODES}")
    parser.add_argument(
        "--buffer-batches",
        default=str(SHUFFLE_BUFFER_BATCHES),
        help="comma-separated shuffle buffer sizes in batches (0: none), e.g. 4,0",
    )
    parser.add_argument("--piece-rows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


MODES = ("dataloader", "ray", "ray-cached")


def build_variants(
    args: argparse.Namespace, aug: ViewAugmentation
) -> list[tuple[str, Callable[[int], Iterable[dict]]]]:
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}, expected some of {MODES}")
    sizes = [int(s) for s in args.decode_size.split(",")]
    buffers = [int(b) for b in args.buffer_batches.split(",")]
    variants = []
    if any(m.startswith("ray") for m in modes):
        import ray

        from clinfo_ray.commands.common import require_token_auth

        require_token_auth()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # a line per epoch otherwise
    for mode in modes:
        for size in sizes:
            if mode == "dataloader":
                variants.append(make_dataloader(args, aug, size))
                continue
            variants += [make_ray(args, aug, mode == "ray-cached", size, b) for b in buffers]
    return variants


def print_table(rows: list[dict[str, Any]]) -> None:
    """Per variant: median over rounds of the mean of epochs 2+ (epoch 1 if only one)."""
    print(
        "\n| loader | epochs 2+ img/s (median of rounds) | vs first | first epoch img/s "
        "| RSS after each epoch, last round (MiB) |"
    )
    print("| --- | --- | --- | --- | --- |")
    medians = {}
    for name in dict.fromkeys(r["loader"] for r in rows):
        mine = [r for r in rows if r["loader"] == name]
        per_round = []
        for k in sorted({r["round"] for r in mine}):
            rates = [r["images_per_s"] for r in mine if r["round"] == k]
            per_round.append(statistics.mean(rates[1:] or rates))
        medians[name] = statistics.median(per_round)
    first_name = next(iter(medians))
    for name, median in medians.items():
        mine = [r for r in rows if r["loader"] == name]
        last = [r for r in mine if r["round"] == mine[-1]["round"]]
        rss = " / ".join(f"{r['rss_mib']:.0f}" for r in last)
        print(
            f"| {name} | {median:.0f} | {median / medians[first_name]:.2f} | "
            f"{mine[0]['images_per_s']:.0f} | {rss} |"
        )


def main() -> None:
    args = parse_args()
    aug = ViewAugmentation(size=args.size, views=args.views)
    variants = build_variants(args, aug)
    rows: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for name, make_epoch in variants:
            epochs = range(round_ * args.epochs, (round_ + 1) * args.epochs)
            rows += timed_epochs(name, make_epoch, epochs, round_)
    print_table(rows)


if __name__ == "__main__":
    main()
