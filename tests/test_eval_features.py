"""Feature extraction over Ray Data and the eval command end to end, on a tiny real dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clinfo_ray.checkpointing import save_checkpoint
from clinfo_ray.config import DataConfig, EvalConfig, ModelConfig, TrainConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import split_files
from clinfo_ray.data.read.decode import decode_batch
from clinfo_ray.evaluation.features import extract_split_features
from clinfo_ray.model import ContrastiveModel, build_model
from tests.datasets import SHAPES_IMAGES

SIZE = 16  # the checkpoint's data.image_size; the images are larger


@pytest.fixture(scope="module")
def dataset(shapes_dataset: Path) -> Path:
    """The session's shapes dataset: 2 shape labels, train and test."""
    return shapes_dataset


@pytest.fixture(scope="module")
def checkpoint(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = TrainConfig(
        data=DataConfig(dataset_dir=str(dataset), image_size=SIZE),
        model=ModelConfig(backbone="small_cnn", cnn_width=4),
        eval=EvalConfig(knn_k=5, linear_epochs=20, linear_batch_size=16),
    )
    model = build_model(cfg.model)
    with torch.no_grad():  # running statistics other than 0 / 1, so eval mode is visible
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    run = tmp_path_factory.mktemp("run")
    return save_checkpoint(run / "checkpoint_000003", model=model, epoch=3, step=30, config=cfg)


def reference_features(
    dataset: Path, split: str, model: ContrastiveModel
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    table = pq.read_table(split_files(dataset, split)).sort_by(C.ID)
    images, ok, _ = decode_batch(table.column(C.IMAGE).to_pylist(), SIZE)
    assert ok.all()
    with torch.no_grad():
        feats = model.encode(torch.from_numpy(images).float() / 255.0).numpy()
    return feats, table.column(C.LABEL).to_numpy(), table.column(C.ID).to_pylist()


def test_features_equal_model_encode_on_the_decoded_images(dataset: Path, checkpoint: Path) -> None:
    from clinfo_ray.checkpointing import load_model_from_checkpoint

    model, _ = load_model_from_checkpoint(checkpoint)
    settings = EvalConfig(batch_size=5, num_actors=2, device="cpu")
    parts = extract_split_features(checkpoint, dataset, settings=settings)
    assert set(parts) == set(C.SPLITS)
    for split in C.SPLITS:
        feats, labels, ids = parts[split]
        want, want_labels, want_ids = reference_features(dataset, split, model)
        assert feats.dtype == np.float32 and labels.dtype == np.int64
        assert feats.shape == (len(want_ids), 8 * 4)  # small_cnn: 8 x its width
        assert list(ids) == want_ids  # sorted by id, nothing lost or repeated
        assert np.array_equal(labels, want_labels)
        np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-5)
        assert np.abs(feats).max() > 0  # a real signal, not an all-zero batch


def colour_of(image_id: str) -> int:
    """The colour of shapes image ``img_NNN.png`` (tests/datasets.py draws colour NNN % 3)."""
    return int(image_id.removeprefix("img_").split(".")[0]) % 3


def with_colour_as_coarse_label(dataset: Path, out: Path) -> Path:
    """A copy of the shapes dataset whose coarse_label is the colour (its label: the shape)."""
    out.mkdir(parents=True)
    manifest = json.loads((dataset / C.MANIFEST).read_text())
    for name in (name for names in manifest["files"].values() for name in names):
        table = pq.read_table(dataset / name)
        colours = pa.array([colour_of(i) for i in table.column(C.ID).to_pylist()], pa.int32())
        index = table.schema.get_field_index(C.COARSE_LABEL)
        pq.write_table(table.set_column(index, C.COARSE_LABEL, colours), out / name)
    (out / C.MANIFEST).write_text(json.dumps(manifest))
    return out


def test_features_carry_the_configured_label_column(
    dataset: Path, checkpoint: Path, tmp_path: Path
) -> None:
    coloured = with_colour_as_coarse_label(dataset, tmp_path / "coloured")
    settings = EvalConfig(batch_size=16, num_actors=1, device="cpu")
    parts = extract_split_features(
        checkpoint, coloured, settings=settings, label_column=C.COARSE_LABEL
    )
    shapes = extract_split_features(checkpoint, coloured, [C.TEST], settings=settings)
    for split, part in parts.items():
        assert part.labels.tolist() == [colour_of(i) for i in part.ids], split
    assert not np.array_equal(parts[C.TEST].labels, shapes[C.TEST].labels)  # the shapes'
    np.testing.assert_array_equal(parts[C.TEST].features, shapes[C.TEST].features)


def test_eval_command_writes_json_and_tensorboard(
    dataset: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from clinfo_ray.commands.main import main

    out = tmp_path / "eval_out"
    argv = ["eval", "--checkpoint", str(checkpoint), "--out", str(out), "--set", "eval.knn_k=3"]
    assert main([*argv, "--num-actors", "1", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "checkpoint_000003.json").read_text())
    assert printed == saved
    assert saved["eval_config"]["knn_k"] == 3  # the override
    assert saved["eval_config"]["linear_epochs"] == 20  # the checkpoint's own eval section
    assert saved["train_rows"] + saved["test_rows"] == SHAPES_IMAGES and saved["test_rows"] > 0
    assert saved["num_classes"] == 2 and saved["feature_dim"] == 32 and saved["epoch"] == 3
    for key in ("linear_top1", "linear_top5", "knn_top1", "recall_at_1", "map_at_r"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["recall_at_1"] <= saved["recall_at_5"] <= saved["recall_at_10"]
    assert saved["linear_top5"] == 1.0  # top-5 of 2 classes
    events = EventAccumulator(str(out))
    events.Reload()
    for key in ("linear_top1", "linear_top5", "knn_top1", "recall_at_1", "map_at_r"):
        (scalar,) = events.Scalars(f"eval/{key}")
        assert scalar.step == 3 and scalar.value == pytest.approx(saved[key])


def test_eval_command_rejects_non_eval_overrides(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clinfo_ray.commands.main import main

    argv = ["eval", "--checkpoint", str(checkpoint), "--set", "optim.lr=0.1"]
    assert main(argv) == 2
    assert "eval.*" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint), "--set", "eval.knn_k=0"]) == 2
    assert "eval.knn_k" in capsys.readouterr().err
