"""Images/s of the Ray Data view stream against a torch DataLoader doing the same work.

Both read the same Parquet split, decode with ``decode_batch`` and augment with the same
``ViewAugmentation`` in batches; the DataLoader uses ``num_workers`` worker processes, the Ray
stream a local Ray with as many CPUs. Reports images/s per epoch and the resident memory (driver
plus its child processes) after each epoch.

    python benchmarks/data_bench.py --data DIR [--epochs 4] [--batch-size 256] [--cpus 2]
        [--modes dataloader,ray,ray-full,ray-cached] [--piece-rows 32] [--local-shuffle 0]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterable

import pyarrow.parquet as pq
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from clinfo_ray.data import columns as C
from clinfo_ray.data.augment import ViewAugmentation
from clinfo_ray.data.decode import decode_batch
from clinfo_ray.data.manifest import split_files


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


def timed_epochs(name: str, make_epoch: Callable[[], Iterable[dict]], epochs: int) -> list[dict]:
    out = []
    for epoch in range(epochs):
        start, n = time.perf_counter(), 0
        for batch in make_epoch():
            n += batch["views"].shape[0]
        seconds = time.perf_counter() - start
        out.append(
            {
                "loader": name,
                "epoch": epoch,
                "images": n,
                "seconds": seconds,
                "images_per_s": n / seconds,
                "rss_mib": rss_mib(),
            }
        )
        print(
            f"{name:>22} epoch {epoch}: {n} images {seconds:6.2f} s "
            f"{n / seconds:8.0f} img/s  rss {out[-1]['rss_mib']:.0f} MiB",
            flush=True,
        )
    return out


def run_dataloader(args: argparse.Namespace, aug: ViewAugmentation) -> list[dict]:
    data = ParquetViews(split_files(args.data, args.split), args.decode_size, aug)
    sampler = BatchSampler(RandomSampler(data), batch_size=args.batch_size, drop_last=True)
    loader = DataLoader(
        data,
        sampler=sampler,
        batch_size=None,
        num_workers=args.cpus,
        persistent_workers=True,
        prefetch_factor=2,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )
    return timed_epochs(f"DataLoader(workers={args.cpus})", lambda: loader, args.epochs)


RAY_MODES = {"ray": ("pieces", False), "ray-full": ("full", False), "ray-cached": ("pieces", True)}


def run_ray(args: argparse.Namespace, aug: ViewAugmentation, mode: str) -> list[dict]:
    from clinfo_ray.data.stream import build_view_stream, iter_views

    shuffle, cache = RAY_MODES[mode]
    ds = build_view_stream(
        args.data,
        augmentation=aug,
        split=args.split,
        decode_size=args.decode_size,
        cache_decoded=cache,
        shuffle=shuffle,
        piece_rows=args.piece_rows,
    )
    name = f"Ray Data ({shuffle}{', cached' if cache else ''})"
    buffer = args.local_shuffle or None
    rows = timed_epochs(
        name,
        lambda: iter_views(ds, batch_size=args.batch_size, local_shuffle_buffer_size=buffer),
        args.epochs,
    )
    if args.stats:
        print(ds.stats())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default=C.TRAIN)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--decode-size", type=int, default=32)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--modes", default="dataloader,ray,ray-cached", help=f"of {RAY_MODES}")
    parser.add_argument("--piece-rows", type=int, default=32)
    parser.add_argument("--local-shuffle", type=int, default=0, help="iter_views buffer rows")
    parser.add_argument("--stats", action="store_true", help="print Ray Data stats per mode")
    args = parser.parse_args()
    aug = ViewAugmentation(size=args.size, views=args.views)
    modes = args.modes.split(",")
    rows = []
    if "dataloader" in modes:
        rows += run_dataloader(args, aug)
    if any(m.startswith("ray") for m in modes):
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        for mode in [m for m in modes if m in RAY_MODES]:
            rows += run_ray(args, aug, mode)
    print("\n| loader | epochs 2+ img/s (mean) | first epoch img/s | RSS after each epoch (MiB) |")
    print("| --- | --- | --- | --- |")
    for name in dict.fromkeys(r["loader"] for r in rows):
        mine = [r for r in rows if r["loader"] == name]
        steady = [r["images_per_s"] for r in mine[1:]] or [mine[0]["images_per_s"]]
        rss = " / ".join(f"{r['rss_mib']:.0f}" for r in mine)
        print(
            f"| {name} | {sum(steady) / len(steady):.0f} | {mine[0]['images_per_s']:.0f} | {rss} |"
        )


if __name__ == "__main__":
    main()
