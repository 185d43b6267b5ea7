"""data.label_column: every reader of the downstream label (the `labels` clusters, supcon's
table, the statistics, the training stream, the frozen-feature decode) takes the configured
column and hands it on as `label`. A tiny dataset of real PNGs whose label and coarse_label
differ; no Ray (the feature extraction over Ray is in test_eval_features.py)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clinfo_ray.clusters.build import build_clusters, statistics_of_table
from clinfo_ray.clusters.metadata import read_metadata
from clinfo_ray.config import ClustersConfig, ConfigError, DataConfig, TrainConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import Manifest
from clinfo_ray.data.read.stream import INDEX, PieceViews, StreamPlan
from clinfo_ray.evaluation.features import DecodeImages
from clinfo_ray.training.launch import prepare_cluster_table

N_TRAIN, N_TEST = 12, 6
FINE = [i % 6 for i in range(N_TRAIN + N_TEST)]  # label: 6 classes
COARSE = [v // 3 for v in FINE]  # coarse_label: 2 classes, one level up


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), (20 * i % 256, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """One shard per split; ids r00..r17, the first 12 train."""
    root = tmp_path / "ds"
    root.mkdir()
    n = N_TRAIN + N_TEST
    table = pa.table(
        {
            C.ID: [f"r{i:02d}" for i in range(n)],
            C.IMAGE: [png(i) for i in range(n)],
            C.LABEL: FINE,
            C.TAGS: [[] for _ in range(n)],
            C.COARSE_LABEL: COARSE,
            C.HIERARCHY: [None] * n,
            C.SPLIT: [C.TRAIN] * N_TRAIN + [C.TEST] * N_TEST,
        }
    ).cast(C.SCHEMA)
    pq.write_table(table.slice(0, N_TRAIN), root / "train-000000.parquet")
    pq.write_table(table.slice(N_TRAIN), root / "test-000000.parquet")
    Manifest(
        source="test",
        rows={C.TRAIN: N_TRAIN, C.TEST: N_TEST},
        class_names=[f"c{i}" for i in range(6)],
        coarse_class_names=["a", "b"],
        tag_vocabulary_size=0,
        skipped=[],
        files={C.TRAIN: ["train-000000.parquet"], C.TEST: ["test-000000.parquet"]},
    ).write(root)
    return root


def test_the_key_takes_the_two_label_columns_only() -> None:
    assert DataConfig().label_column == C.LABEL
    assert DataConfig(label_column="coarse_label").label_column == C.COARSE_LABEL
    with pytest.raises(ConfigError, match=r"data\.label_column") as err:
        DataConfig(label_column="tags")  # type: ignore[arg-type]
    assert err.value.key == "data.label_column"


def test_metadata_presents_the_configured_column_as_label(dataset: Path) -> None:
    table = read_metadata(dataset, [C.ID, C.LABEL], label_column=C.COARSE_LABEL)
    assert table.column_names == [C.ID, C.LABEL]
    assert table.column(C.LABEL).to_pylist() == COARSE
    assert read_metadata(dataset, [C.ID, C.LABEL]).column(C.LABEL).to_pylist() == FINE
    with pytest.raises(ValueError, match="stands for it"):
        read_metadata(dataset, [C.LABEL, C.COARSE_LABEL], label_column=C.COARSE_LABEL)


def test_labels_clusters_and_their_statistics_follow_the_label_column(dataset: Path) -> None:
    out = dataset.parent / "coarse.parquet"
    record = build_clusters(
        ClustersConfig(method="labels"), dataset, out, label_column=C.COARSE_LABEL
    )
    clusters = pq.read_table(out).column(C.CLUSTER).to_pylist()
    assert len(set(clusters)) == 2 and all(
        (clusters[i] == clusters[j]) == (COARSE[i] == COARSE[j])
        for i in range(18)
        for j in range(18)
    )
    assert record["label_column"] == C.COARSE_LABEL
    assert record["details"]["column"] == C.COARSE_LABEL
    assert record["label_entropy_bits"] == pytest.approx(1.0)  # against coarse_label
    assert record["conditional_entropy_bits"] == pytest.approx(0.0)
    # the same table against the fine label: H(T) = log2 6, and it says 1 bit of it
    fine = statistics_of_table(out, dataset)
    assert fine["label_entropy_bits"] == pytest.approx(math.log2(6))
    assert fine["mutual_information_bits"] == pytest.approx(1.0)
    again = statistics_of_table(out, dataset, label_column=C.COARSE_LABEL)
    assert again["label_entropy_bits"] == pytest.approx(1.0)


def test_supcon_on_coarse_label_trains_on_the_categories(dataset: Path, tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict(
        {
            "data": {"dataset_dir": str(dataset), "label_column": "coarse_label"},
            "loss": {"method": "supcon"},
        }
    )
    path, stats = prepare_cluster_table(cfg, tmp_path / "run")
    assert path is not None and stats is not None
    assert stats["num_clusters"] == 2 and stats["label_column"] == C.COARSE_LABEL


def test_split_labels_of_the_coarse_column(dataset: Path) -> None:
    config = ClustersConfig(method="labels", label_split=2)
    record = build_clusters(
        config, dataset, dataset.parent / "t.parquet", label_column=C.COARSE_LABEL
    )
    # 2 coarse labels x 6 train rows, each dealt into 2 parts of 3
    assert record["num_clusters"] == 4
    assert record["mutual_information_bits"] == pytest.approx(1.0, abs=1e-9)
    assert record["conditional_entropy_bits"] == pytest.approx(1.0, abs=1e-9)


def test_the_stream_hands_on_the_configured_column_as_label(dataset: Path) -> None:
    for column, want in ((C.LABEL, FINE), (C.COARSE_LABEL, COARSE)):
        plan = StreamPlan.build(dataset, augmentation=None, decode_size=8, label_column=column)
        assert plan.decode.columns == (C.ID, C.IMAGE, column)
        rows = PieceViews(plan.decode, None, None)(plan.pieces)  # one task, file order, no Ray
        by_index = dict(zip(rows[INDEX].tolist(), rows[C.LABEL].tolist(), strict=True))
        assert by_index == {i: want[i] for i in range(N_TRAIN)}  # ids sorted: r00..r11


def test_the_feature_decode_hands_on_the_configured_column_as_label(dataset: Path) -> None:
    table = pq.read_table(dataset / "test-000000.parquet")
    for column, want in ((C.LABEL, FINE), (C.COARSE_LABEL, COARSE)):
        out = DecodeImages(8, column)(table)
        assert out[C.LABEL].dtype == np.int64
        assert out[C.LABEL].tolist() == want[N_TRAIN:]
        assert out["image_u8"].shape == (N_TEST, 3, 8, 8)
