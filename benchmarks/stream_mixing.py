"""How label-correlated are the streamed batches? (issue 9, item 2)

Draws 600 shapes annotated in label order (6 classes of 100, as UT-Zappos50K's folders and the
emoji code points are sorted), prepares them (rows written in one seeded permutation), and also
rewrites a copy whose train files are sorted by label (what `prepare` wrote before issue 9).
For each, streams 5 epochs of batches of 32 (data.cache none) with the worker's shuffle buffer
on (4 batches, the default) and off, and compares two numbers with batches drawn uniformly at
random: the mean run length of equal labels inside a batch, and the share of a batch's pairs
that share a label (the extra positives of Cl-InfoNCE / SupCon, the same-class negatives of
SimCLR).

    python benchmarks/stream_mixing.py
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinfo_ray.config import PrepareConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import split_files
from clinfo_ray.data.read.augment import ViewAugmentation
from clinfo_ray.data.read.stream import StreamPlan
from clinfo_ray.data.row_order import batch_label_mixing, uniform_batches
from clinfo_ray.data.write.prepare import prepare
from tests.datasets import draw_shapes

N_IMAGES, N_CLASSES = 600, 6  # as tests/test_data_row_order.py


def _sorted_copy(src: Path, dst: Path) -> Path:
    """The prepared set with its train files rewritten in label order (same files, rows)."""
    shutil.copytree(src, dst)
    files = split_files(dst, C.TRAIN)
    table = pq.read_table(files)
    table = table.take(pc.sort_indices(table, [(C.LABEL, "ascending")]))
    start = 0
    for path in files:
        rows = pq.ParquetFile(path).metadata.num_rows
        pq.write_table(table.slice(start, rows), path, row_group_size=512)
        start += rows
    return dst


def main() -> None:
    import ray

    from clinfo_ray.commands.common import require_token_auth

    require_token_auth()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="stream_mixing_"))
    records = draw_shapes(root / "img", N_IMAGES, size=16)
    lines = ["path,tags,label"]
    for i, r in enumerate(records):
        lines.append(f"{r['path']},{'|'.join(r['tags'])},c{i * N_CLASSES // N_IMAGES}")
    (root / "a.csv").write_text("\n".join(lines) + "\n")
    config = PrepareConfig(
        "imagefolder",
        str(root / "prepared"),
        images=str(root / "img"),
        annotations=str(root / "a.csv"),
        shard_size=128,
    )
    prepare(config)
    sets = {"prepared (seeded permutation)": root / "prepared"}
    sets["train files sorted by label"] = _sorted_copy(root / "prepared", root / "sorted")
    print("| rows | shuffle buffer | run length in batch | same-label pairs | uniform (both) |")
    print("| --- | --- | --- | --- | --- |")
    for name, data in sets.items():
        labels = pq.read_table(split_files(data, C.TRAIN), columns=[C.LABEL]).column(0)
        uniform = batch_label_mixing(uniform_batches(np.asarray(labels), 32))
        for buffer in (4, 0):
            plan = StreamPlan.build(data, augmentation=ViewAugmentation(size=8, views=1), seed=0)
            batches = [
                b["label"].numpy()
                for epoch in range(1, 6)
                for b in plan.iter_epoch(epoch, batch_size=32, shuffle_buffer_batches=buffer)
            ]
            runs, pairs = batch_label_mixing(batches)
            print(
                f"| {name} | {buffer} batches | {runs:.3f} | {pairs:.3f} | "
                f"{uniform[0]:.3f} / {uniform[1]:.3f} |"
            )
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
