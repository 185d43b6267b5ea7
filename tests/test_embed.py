"""``clinfo-ray embed`` and the one embedding path under it, on the session's shapes dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from clinfo_ray.checkpointing import load_model_from_checkpoint, save_checkpoint
from clinfo_ray.commands.main import main
from clinfo_ray.config import DataConfig, EvalConfig, ModelConfig, TrainConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import Manifest, split_files
from clinfo_ray.data.read.decode import decode_batch
from clinfo_ray.evaluation.decode_rows import DecodeImages
from clinfo_ray.evaluation.embed import (
    EMBEDDING,
    DatasetImages,
    EncodeImages,
    embedding_dataset,
    embedding_matrix,
)
from clinfo_ray.evaluation.encoder_source import CheckpointEncoder
from clinfo_ray.evaluation.features import extract_split_features
from clinfo_ray.model import build_model
from tests.datasets import (
    BROKEN_ID,
    SHAPES_TEST,
    SHAPES_TRAIN,
    draw_shapes,
    train_split_with_undecodable_row,
)

SIZE = 16  # the checkpoint's data.image_size; the images are 24 px
DIM = 32  # small_cnn: 8 x its width
CPU = ["--device", "cpu", "--batch-size", "5"]  # 5: several batches per split


def make_checkpoint(folder: Path, dataset_dir: str) -> Path:
    torch.manual_seed(0)
    cfg = TrainConfig(
        data=DataConfig(dataset_dir=dataset_dir, image_size=SIZE),
        model=ModelConfig(backbone="small_cnn", cnn_width=4),
    )
    model = build_model(cfg.model)
    with torch.no_grad():  # running statistics other than 0 / 1, so eval mode is visible
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(folder / "checkpoint_000003", model=model, epoch=3, step=30, config=cfg)


@pytest.fixture(scope="module")
def checkpoint(shapes_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run"), str(shapes_dataset))


def read_out(out: Path) -> tuple[pa.Table, dict[str, Any]]:
    """The shards (sorted by id) and the manifest of an embed output."""
    table = pq.read_table(sorted(out.glob("*.parquet")))
    return table.sort_by(C.ID), json.loads((out / "manifest.json").read_text())


def one_process(table: pa.Table, checkpoint: Path, normalize: bool = False) -> pa.Table:
    """The rows of ``table`` by the same transforms in this process, in one batch, no Ray."""
    threads = torch.get_num_threads()  # as it is: the actor sets it
    encode = EncodeImages(CheckpointEncoder(str(checkpoint)), False, threads, normalize)
    return encode(DecodeImages(SIZE)(table)).sort_by(C.ID)


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    assert got.schema == want.schema
    for column in (C.ID, C.SPLIT, C.LABEL):
        assert got.column(column).to_pylist() == want.column(column).to_pylist(), column
    vectors = embedding_matrix(got.column(EMBEDDING))
    # float32 convolutions summed in another order (threads) differ in the last bits
    np.testing.assert_allclose(vectors, embedding_matrix(want.column(EMBEDDING)), atol=1e-4)
    assert np.abs(vectors).max() > 0


def test_embed_with_two_actors_gives_the_rows_of_one_process(
    shapes_dataset: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "emb"
    argv = ["embed", "--checkpoint", str(checkpoint), "--data", str(shapes_dataset)]
    assert main([*argv, "--out", str(out), "--num-actors", "2", *CPU]) == 0
    table, manifest = read_out(out)
    printed = capsys.readouterr().out  # the manifest, last (Ray Data may log lines before it)
    assert json.loads(printed[printed.rfind("\n{\n") + 1 :]) == manifest
    source = pq.read_table(
        [*split_files(shapes_dataset, C.TRAIN), *split_files(shapes_dataset, C.TEST)]
    )
    assert_same_rows(table, one_process(source, checkpoint))
    assert table.schema.field(EMBEDDING).type == pa.list_(pa.float32(), DIM)
    assert manifest["rows"] == {C.TRAIN: SHAPES_TRAIN, C.TEST: SHAPES_TEST}
    assert manifest["skipped_undecodable"] == 0 and manifest["dimension"] == DIM
    assert manifest["input_size"] == SIZE and manifest["normalize"] is False
    assert manifest["encoder"]["epoch"] == 3 and manifest["encoder"]["step"] == 30
    assert len(manifest["encoder"]["config_sha256"]) == 64
    assert [c["name"] for c in manifest["columns"]] == [C.ID, C.SPLIT, C.LABEL, EMBEDDING]
    assert "--num-actors 2" in manifest["command"]


def test_an_undecodable_image_is_skipped_and_counted(
    shapes_dataset: Path, checkpoint: Path, tmp_path: Path
) -> None:
    broken = train_split_with_undecodable_row(shapes_dataset, tmp_path / "broken")
    out = tmp_path / "emb"
    argv = ["embed", "--checkpoint", str(checkpoint), "--data", str(broken), "--out", str(out)]
    assert main([*argv, "--num-actors", "2", *CPU]) == 0
    table, manifest = read_out(out)
    assert manifest["skipped_undecodable"] == 1
    assert manifest["skipped_by_split"] == {C.TRAIN: 1, C.TEST: 0}
    assert (
        manifest["rows"]
        == {C.TRAIN: SHAPES_TRAIN, C.TEST: 0}
        == {
            C.TRAIN: table.num_rows,
            C.TEST: 0,
        }
    )
    assert BROKEN_ID not in table.column(C.ID).to_pylist()


def test_images_folder_without_annotations(
    shapes_dataset: Path, checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    draw_shapes(folder, 4, size=24)
    draw_shapes(folder / "deeper" / "still", 3, size=30, fmt="JPEG")
    (folder / "notes.txt").write_text("not an image, and not named like one\n")
    (folder / "deeper" / "bad.png").write_bytes(b"\x89PNG, but cut short")
    out = tmp_path / "emb"
    argv = ["embed", "--checkpoint", str(checkpoint), "--images", str(folder), "--out", str(out)]
    assert main([*argv, "--normalize", "--num-actors", "1", *CPU]) == 0
    table, manifest = read_out(out)
    want = sorted(
        [f"img_{i:03d}.png" for i in range(4)] + [f"deeper/still/img_{i:03d}.jpg" for i in range(3)]
    )
    assert table.column(C.ID).to_pylist() == want  # relative paths; bad.png skipped
    assert table.column(C.SPLIT).to_pylist() == ["images"] * 7
    assert table.column(C.LABEL).null_count == 7
    norms = np.linalg.norm(embedding_matrix(table.column(EMBEDDING)), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert manifest["rows"] == {"images": 7} and manifest["skipped_undecodable"] == 1
    assert manifest["normalize"] is True


def test_an_exported_encoder_embeds_as_its_checkpoint(
    shapes_dataset: Path, checkpoint: Path, tmp_path: Path
) -> None:
    """And --overwrite replaces an earlier output; --splits chooses."""
    from clinfo_ray.export import export_encoder

    export_encoder(checkpoint, tmp_path / "export")
    out, tables = tmp_path / "emb", []
    for flag, path in (("--checkpoint", checkpoint), ("--encoder", tmp_path / "export")):
        argv = ["embed", flag, str(path), "--data", str(shapes_dataset), "--splits", "test"]
        assert main([*argv, "--out", str(out), "--overwrite", "--num-actors", "1", *CPU]) == 0
        table, manifest = read_out(out)
        tables.append(table)
        assert manifest["rows"] == {C.TEST: SHAPES_TEST} and manifest["input_size"] == SIZE
        assert manifest["encoder"]["epoch"] == 3 and len(manifest["files"]) == 1
    assert_same_rows(tables[1], tables[0])


def old_path_features(checkpoint: Path, dataset: Path, batch_size: int) -> dict[str, np.ndarray]:
    """What extract_split_features computed before the embedding path: Parquet -> decode tasks
    -> (B, D) numpy from an actor -> gathered, sorted by id. Split -> (n, D)."""
    size = SIZE

    class Encode:
        def __init__(self) -> None:
            self.model, _ = load_model_from_checkpoint(checkpoint)

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(batch.pop("image_u8"))).float() / 255
                return {**batch, "features": self.model.encode(x).float().numpy()}

    def decode(table: pa.Table) -> dict[str, np.ndarray]:
        images, ok, _ = decode_batch(table.column(C.IMAGE).to_pylist(), size)
        ids = np.asarray(table.column(C.ID).to_pylist(), dtype=object)[ok]
        return {
            C.ID: ids,
            C.SPLIT: np.asarray(table.column(C.SPLIT).to_pylist())[ok],
            "image_u8": images,
        }

    files = [f for split in C.SPLITS for f in split_files(dataset, split)]
    ds = ray.data.read_parquet(files).map_batches(
        decode, batch_size=batch_size, batch_format="pyarrow"
    )
    ds = ds.map_batches(Encode, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=1))
    rows = ds.take_all()
    result = {}
    for split in C.SPLITS:
        mine = sorted((r[C.ID], r["features"]) for r in rows if r[C.SPLIT] == split)
        result[split] = np.stack([vector for _, vector in mine])
    return result


def test_features_equal_the_old_paths(shapes_dataset: Path, checkpoint: Path) -> None:
    settings = EvalConfig(batch_size=5, num_actors=1, device="cpu")
    new = extract_split_features(checkpoint, shapes_dataset, settings=settings)
    old = old_path_features(checkpoint, shapes_dataset, batch_size=5)
    for split in C.SPLITS:
        assert new[split].features.dtype == np.float32
        np.testing.assert_allclose(new[split].features, old[split], rtol=1e-6, atol=1e-6)


def test_decoding_runs_in_tasks_apart_from_the_encoder_actors(
    shapes_dataset: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = DatasetImages.checked(shapes_dataset, [C.TEST])
    settings = EvalConfig(batch_size=5, num_actors=1, device="cpu")
    embedding_dataset(images, CheckpointEncoder(str(checkpoint)), settings).explain()
    plan = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    ops = [line.lstrip(" +-") for line in plan.splitlines()]
    assert "ActorPoolMapOperator[MapBatches(EncodeImages)]" in ops, plan  # decode not fused in
    (decode,) = [op for op in ops if "MapBatches(DecodeImages)" in op]
    assert decode.startswith("TaskPoolMapOperator["), plan


def test_bad_inputs_fail_in_one_line_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ray_session: the conftest fails this test if any of these starts Ray."""
    data = tmp_path / "data"
    data.mkdir()
    files = {}
    for split in C.SPLITS:
        row = {C.ID: f"{split}.png", C.IMAGE: b"\x89PNG", C.TAGS: [], C.SPLIT: split}
        pq.write_table(pa.Table.from_pylist([row], schema=C.SCHEMA), data / f"{split}.parquet")
        files[split] = [f"{split}.parquet"]
    Manifest("test", {C.TRAIN: 1, C.TEST: 1}, [], [], 0, [], files).write(data)
    ckpt = make_checkpoint(tmp_path, str(data))
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("")
    fresh = str(tmp_path / "out")
    cases = [
        (
            "no such checkpoint directory",
            ["--checkpoint", str(tmp_path / "nope"), "--data", str(data)],
            fresh,
        ),
        ("no manifest.json", ["--checkpoint", str(ckpt), "--data", str(tmp_path)], fresh),
        (
            "split: 'val' is not in ['test', 'train']",
            ["--checkpoint", str(ckpt), "--data", str(data), "--splits", "train,val"],
            fresh,
        ),
        ("not empty", ["--checkpoint", str(ckpt), "--data", str(data)], str(full)),
        (
            "which embed did not write",
            ["--checkpoint", str(ckpt), "--data", str(data), "--overwrite"],
            str(full),
        ),
        ("no preprocess.json", ["--encoder", str(tmp_path), "--data", str(data)], fresh),
        ("no image files", ["--checkpoint", str(ckpt), "--images", str(data)], fresh),
    ]
    for expected, argv, out in cases:
        assert main(["embed", *argv, "--out", out]) == 2, expected
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("clinfo-ray embed: error: "), lines
        assert expected in lines[0], lines[0]
    assert (full / "mine.txt").exists()


def test_the_job_is_the_command() -> None:
    job = Path(__file__).resolve().parents[1] / "jobs" / "embed.py"
    result = subprocess.run(
        [sys.executable, str(job), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: clinfo-ray embed")
    assert "--checkpoint CKPT" in result.stdout and "--images FOLDER" in result.stdout
