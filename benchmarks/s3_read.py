"""Images/s of the streamed training input read from an S3-compatible server on loopback against
the same Parquet files on local disk, in one run; and the local disk the S3 stream uses.

The dataset folder ``--data`` is uploaded to a bucket of moto's server (started here as a
separate process on 127.0.0.1, dummy credentials), then ``StreamPlan.build`` of the local
folder and of ``s3://bench/<name>`` are iterated as one rank (``plan.iter_epoch``: read, decode,
two augmented views, the worker's shuffle buffer), the two alternating within each round so
that the machine's slow spells hit both. The table shows per source the median over rounds of
each round's mean images/s of its epochs after the first (the first epoch of each round is
shown, not counted), and S3 / local.

Local disk: the run gets a temporary folder of its own, ``TMPDIR`` and ``RAY_TMPDIR`` of this
process and of every Ray process (Ray's session, its logs and spills, and any temporary file a
task makes are under it). While the S3 stream runs, the bytes of the files there are summed
every 0.5 s; the peak growth over the value before the epoch is printed beside the size of the
largest Parquet shard. A stream that downloaded its input first would grow by the split's size.

    python benchmarks/s3_read.py --data data/emoji4 [--rounds 3] [--epochs 3] [--cpus 2]
        [--batch-size 256] [--size 32] [--decode-size 64] [--piece-rows 32]
        [--row-group-rows 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

BUCKET = "bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in a process of its own on 127.0.0.1; the environment pointed at it."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def _tree_bytes(folder: str) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed while walking
    return total


class DiskSampler:
    """Peak growth of the bytes of the files under ``folder`` while it runs."""

    def __init__(self, folder: str, every: float = 0.5) -> None:
        self.folder, self.every = folder, every
        self.base = _tree_bytes(folder)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_bytes(self.folder) - self.base)
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _tree_bytes(self.folder) - self.base)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared dataset folder (local)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per source per round")
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the local Ray")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32, help="side of the views")
    parser.add_argument("--decode-size", type=int, default=64)
    parser.add_argument(
        "--piece-rows", type=int, default=None, help="rows per piece (default: the stream's)"
    )
    parser.add_argument(
        "--row-group-rows",
        type=int,
        default=None,
        help="first rewrite --data's shards with row groups of this many rows (the same rows; "
        "what prepare writes today is columns.PIECE_ROWS), and read that copy from both",
    )
    return parser.parse_args()


def rewritten(folder: str, scratch: str, rows: int) -> str:
    """A copy of a prepared dataset whose Parquet shards have row groups of ``rows`` rows."""
    import pyarrow.parquet as pq

    from clinfo_ray.data import columns as C

    out = os.path.join(scratch, "rewritten", os.path.basename(os.path.abspath(folder)))
    os.makedirs(out)
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".parquet"):
            table = pq.read_table(path)
            codecs = {n: ("none" if n == C.IMAGE else "zstd") for n in table.schema.names}
            pq.write_table(table, os.path.join(out, name), compression=codecs, row_group_size=rows)
        elif os.path.isfile(path):
            shutil.copy(path, out)
    return out


def run_epoch(plan: Any, epoch: int, batch_size: int) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for batch in plan.iter_epoch(epoch, batch_size=batch_size):
        n += batch["views"].shape[0]
    return n, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    scratch = tempfile.mkdtemp(prefix="s3b-")  # short: Ray's socket paths live under it
    os.environ["TMPDIR"] = os.environ["RAY_TMPDIR"] = scratch
    tempfile.tempdir = scratch
    if args.row_group_rows:
        args.data = rewritten(args.data, scratch, args.row_group_rows)
        print(f"read from {args.data}: row groups of {args.row_group_rows} rows", flush=True)
    with moto_server() as endpoint:
        import pyarrow.fs as pafs
        import ray

        from clinfo_ray.data.manifest import split_files
        from clinfo_ray.data.read.augment import ViewAugmentation
        from clinfo_ray.data.read.stream import StreamPlan
        from clinfo_ray.storage import location as loc

        pafs.S3FileSystem(
            endpoint_override=endpoint, region="us-east-1", allow_bucket_creation=True
        ).create_dir(BUCKET)
        remote = f"s3://{BUCKET}/{os.path.basename(os.path.abspath(args.data))}"
        started = time.perf_counter()
        loc.upload_dir(args.data, remote)
        shards = split_files(args.data, args.split)
        largest = max(os.path.getsize(f) for f in shards)
        split_bytes = sum(os.path.getsize(f) for f in shards)
        print(
            f"uploaded {args.data} to {remote} ({time.perf_counter() - started:.1f} s); "
            f"{args.split}: {len(shards)} shards, {split_bytes / 2**20:.1f} MiB, largest "
            f"{largest / 2**20:.2f} MiB",
            flush=True,
        )
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        aug = ViewAugmentation(size=args.size)
        plans = {
            where: StreamPlan.build(
                source,
                augmentation=aug,
                split=args.split,
                decode_size=args.decode_size,
                **({"piece_rows": args.piece_rows} if args.piece_rows else {}),
            )
            for where, source in (("local", args.data), ("s3", remote))
        }
        rates: dict[str, list[float]] = {"local": [], "s3": []}
        disk_peak = 0
        for round_ in range(args.rounds):
            for where, plan in plans.items():
                kept = []
                for epoch in range(args.epochs):
                    sampler = DiskSampler(scratch) if where == "s3" else None
                    n, seconds = run_epoch(plan, epoch, args.batch_size)
                    grew = sampler.stop() if sampler is not None else 0
                    disk_peak = max(disk_peak, grew)
                    if epoch > 0:
                        kept.append(n / seconds)
                    print(
                        f"round {round_} {where:>5} epoch {epoch}: {n} images {seconds:6.2f} s "
                        f"{n / seconds:7.0f} img/s"
                        + (f"  local disk +{grew / 2**20:.2f} MiB" if where == "s3" else ""),
                        flush=True,
                    )
                rates[where].append(statistics.mean(kept) if kept else float("nan"))
        ray.shutdown()
    shutil.rmtree(scratch, ignore_errors=True)
    local, s3 = statistics.median(rates["local"]), statistics.median(rates["s3"])
    print("\n| source | images/s (median over rounds) | rounds |")
    print("|---|---:|---|")
    for where, value in (("local disk", local), ("S3 (moto, loopback)", s3)):
        key = "local" if where == "local disk" else "s3"
        print(f"| {where} | {value:.0f} | {', '.join(f'{r:.0f}' for r in rates[key])} |")
    print(f"\nS3 / local: {s3 / local:.2f}")
    print(
        f"local disk growth during the S3 epochs: peak {disk_peak / 2**20:.2f} MiB "
        f"(largest shard {largest / 2**20:.2f} MiB, split {split_bytes / 2**20:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
