"""Test data shared by the test modules: shapes drawn with PIL, their annotation files, and the
session's one prepared shapes dataset (the `shapes_dataset` fixture of conftest.py)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from clinfo_ray.data import columns as C

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SHAPES = ("circle", "square")


def draw_shapes(folder: Path, n: int, *, size: int = 40, fmt: str = "PNG") -> list[dict]:
    """Draw ``n`` coloured shapes into ``folder``: image i is colour i % 3 and shape (i // 3) % 2.
    Returns one record {path, tags, label} per image, tagged by colour and shape, labelled by
    shape."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        colour = list(COLOURS)[i % 3]
        shape = SHAPES[(i // 3) % 2]
        img = Image.new("RGB", (size, size), (250, 250, 250))
        draw = ImageDraw.Draw(img)
        box = (5 + i % 5, 6, size - 6, size - 5 - i % 4)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        name = f"img_{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        img.save(folder / name, format=fmt)
        records.append({"path": name, "tags": [colour, shape], "label": shape})
    return records


def write_csv(path: Path, records: list[dict]) -> Path:
    """The imagefolder CSV of ``records``: path,tags,label, and a split column when every record
    has a "split"."""
    with_split = bool(records) and all("split" in r for r in records)
    lines = ["path,tags,label" + (",split" if with_split else "")]
    for r in records:
        cells = [r["path"], "|".join(r["tags"]), r.get("label") or ""]
        lines.append(",".join([*cells, r["split"]] if with_split else cells))
    path.write_text("\n".join(lines) + "\n")
    return path


# The shapes dataset of the session: 60 images of 24 px, 3 colours x 2 shapes, labelled by shape
# (2 classes), tagged by colour and shape; every 5th image (img_000, img_005, ...) is test.
# Enough for the stream, training (2 workers x 8 per batch), k-means of embeddings and
# evaluation; one shard per split, written by `prepare imagefolder` through Ray.
SHAPES_IMAGES = 60
SHAPES_SIZE = 24
SHAPES_TRAIN, SHAPES_TEST = 48, 12
BROKEN_ID = "broken.png"


def shapes_split(i: int) -> str:
    return C.TEST if i % 5 == 0 else C.TRAIN


def prepare_shapes_dataset(root: Path) -> Path:
    """Draw, annotate and prepare the shapes dataset under ``root``; return its folder
    ``root / "ds"`` (needs Ray running)."""
    from clinfo_ray.config import PrepareConfig
    from clinfo_ray.data.write.prepare import prepare

    records = draw_shapes(root / "img", SHAPES_IMAGES, size=SHAPES_SIZE)
    for i, record in enumerate(records):
        record["split"] = shapes_split(i)
    annotations = write_csv(root / "a.csv", records)
    out = root / "ds"
    manifest = prepare(
        PrepareConfig(
            source="imagefolder",
            out=str(out),
            images=str(root / "img"),
            annotations=str(annotations),
        )
    )
    assert manifest.rows == {C.TRAIN: SHAPES_TRAIN, C.TEST: SHAPES_TEST}, manifest.rows
    return out


def train_split_with_undecodable_row(dataset: Path, out: Path) -> Path:
    """The train split of ``dataset`` copied to ``out`` as a dataset of its own (no test rows),
    plus one more train row, ``BROKEN_ID``, whose bytes are not an image, in a shard of its own
    listed in the manifest: as if a file went bad after prepare checked it. The manifest's row
    counts stay those prepare wrote (the broken row is not counted)."""
    manifest = json.loads((dataset / C.MANIFEST).read_text())
    out.mkdir(parents=True)
    for name in manifest["files"][C.TRAIN]:
        shutil.copyfile(dataset / name, out / name)
    row = {C.ID: BROKEN_ID, C.IMAGE: b"\x89PNG not really", C.TAGS: [], C.SPLIT: C.TRAIN}
    shard = "train-999999.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=C.SCHEMA), out / shard)
    manifest["files"] = {C.TRAIN: [*manifest["files"][C.TRAIN], shard], C.TEST: []}
    manifest["rows"] = {C.TRAIN: manifest["rows"][C.TRAIN], C.TEST: 0}
    (out / C.MANIFEST).write_text(json.dumps(manifest))
    return out


def write_metadata_dataset(root: Path, rows: dict[str, list], shards: int = 2) -> Path:
    """A dataset folder of metadata only (every image the same 4 placeholder bytes): Parquet
    shards with the dataset SCHEMA plus manifest.json, for the tests of clusters and launch."""
    n = len(rows[C.ID])
    table = pa.table({**rows, C.IMAGE: [b"\x89PNG"] * n}).select(C.SCHEMA.names).cast(C.SCHEMA)
    root.mkdir(parents=True)
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        pq.write_table(table.slice(lo, hi - lo), root / f"part-{i:05d}.parquet")
    train = sum(split == C.TRAIN for split in rows[C.SPLIT])
    manifest = {"format_version": C.FORMAT_VERSION, "rows": {C.TRAIN: train, C.TEST: n - train}}
    (root / C.MANIFEST).write_text(json.dumps(manifest))
    return root


def registered_epoch(run_dir: str | Path) -> int:
    """The epoch of the newest checkpoint Ray Train has registered for a run (0 while none): a
    local run folder or one in a bucket."""
    from clinfo_ray.storage import location as loc

    try:
        text = loc.read_text(loc.join(run_dir, "checkpoint_manager_snapshot.json"))
        name = json.loads(text)["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return int(name.removeprefix("checkpoint_epoch"))


def tiny_run_config(
    data: object, out: object, *, epochs: int = 2, name: str = "tiny", lr: float | None = None
) -> str:
    """A train config's YAML for the shapes set: one worker at half a CPU, 16-px images, the
    split in worker memory, 30 % validation rows (the online kNN's queries), tag clusters."""
    lr_line = f"\n  lr: {lr}" if lr is not None else ""
    return f"""\
data:
  dataset_dir: {data}
  image_size: 16
  batch_size_per_worker: 8
  augment_on: worker
  cache: worker
  val_fraction: 0.3
clusters:
  top_k: 2
model:
  cnn_width: 8
optim:
  epochs: {epochs}
  warmup_epochs: 1{lr_line}
run:
  name: {name}
  output_dir: {out}
  num_workers: 1
  cpus_per_worker: 0.5
"""
