"""The GPU machine's training check (no Ray) runs here on the CPU, tiny."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks.gpu_train_check import run
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import Manifest


def _tiny_dataset(folder: Path, n: int = 12) -> Path:
    folder.mkdir()
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (20, 20), (20 * i % 255, 100, 200 - 10 * i)).save(buf, format="PNG")
        rows.append(
            {
                C.ID: f"img{i}",
                C.IMAGE: buf.getvalue(),
                C.LABEL: i % 2,
                C.TAGS: ["t"],
                C.COARSE_LABEL: None,
                C.SPLIT: C.TRAIN,
            }
        )
    pq.write_table(pa.Table.from_pylist(rows, schema=C.SCHEMA), folder / "train-000000.parquet")
    Manifest(
        source="test",
        rows={C.TRAIN: n},
        class_names=["a", "b"],
        coarse_class_names=[],
        tag_vocabulary_size=1,
        skipped=[],
        files={C.TRAIN: ["train-000000.parquet"]},
    ).write(folder)
    return folder


def test_plain_training_check_runs_and_reports(tmp_path: Path) -> None:
    data = _tiny_dataset(tmp_path / "ds")
    result = run(
        "gpu_resnet50",
        [
            f"data.dataset_dir={data}",
            "loss.method=simclr",
            "run.device=cpu",
            "data.augment_on=ray_data",
            "model.backbone=resnet18",
            "model.proj_hidden=64",
            "data.image_size=16",
            "data.batch_size_per_worker=8",
            "optim.warmup_epochs=0",
        ],
        "cpu",
        steps=2,
    )
    assert result["batch"] == 8.0 and result["steps"] == 2.0
    assert result["images_per_s"] > 0 and result["all_finite"] == 1.0
    assert math.isfinite(result["first_loss"]) and result["first_loss"] > 0
