"""The driver's side of a training run that needs no Ray: the clusters built at its start, and
run.device resolved against what the cluster offers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clinfo_ray.config import TrainConfig, apply_overrides
from clinfo_ray.data import columns as C
from clinfo_ray.training.launch import prepare_cluster_table, resolve_device
from tests.datasets import write_metadata_dataset

TAGS = [f"t{i}" for i in range(10)]


@pytest.fixture
def tagged(tmp_path: Path) -> Path:
    """80 train + 10 test rows, each with 1-4 random tags of 10: no structure k-means must find,
    so its result depends on where it starts."""
    rng = np.random.default_rng(3)
    n = 90
    rows: dict[str, list] = {f.name: [None] * n for f in C.SCHEMA if f.name != C.IMAGE}
    rows[C.ID] = [f"r{i:03d}" for i in range(n)]
    rows[C.LABEL] = [int(i % 4) for i in range(n)]
    rows[C.TAGS] = [
        sorted(rng.choice(TAGS, size=rng.integers(1, 5), replace=False).tolist()) for _ in range(n)
    ]
    rows[C.SPLIT] = [C.TRAIN] * 80 + [C.TEST] * 10
    return write_metadata_dataset(tmp_path / "data", rows)


def _cfg(data: Path, seed: int) -> TrainConfig:
    overrides = {"data.dataset_dir": str(data), "clusters.method": "tags-kmeans"}
    return apply_overrides(TrainConfig(), {**overrides, "clusters.k": 6, "run.seed": seed})


def _partition(table_path: str) -> list[int]:
    """Cluster ids renumbered by first appearance in id order: equal lists, equal partitions."""
    table = pq.read_table(table_path).sort_by(C.ID)
    first: dict[int, int] = {}
    return [first.setdefault(c, len(first)) for c in table[C.CLUSTER].to_pylist()]


def test_the_starting_clusters_follow_run_seed(tagged: Path, tmp_path: Path) -> None:
    tables = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        path, stats = prepare_cluster_table(_cfg(tagged, seed), tmp_path / name)
        assert path is not None and stats is not None
        # clusters.kmeans.seed left out: run.seed (cfg.run_clusters)
        assert stats["config"]["kmeans"]["seed"] == seed
        # the statistics file beside the table (what a resumed run reads back) says so too
        saved = json.loads(Path(path).with_suffix(".stats.json").read_text())
        assert saved["config"]["kmeans"]["seed"] == seed
        tables[name] = _partition(path)
    assert tables["a"] == tables["b"]  # the seed decides, nothing else
    assert tables["a"] != tables["c"]


@pytest.mark.parametrize(("gpus", "expected"), [(0, "cpu"), (2, "gpu")])
def test_run_device_auto_follows_the_ray_cluster(
    monkeypatch: pytest.MonkeyPatch, gpus: int, expected: str
) -> None:
    import ray

    resources = {"CPU": 4.0, **({"GPU": float(gpus)} if gpus else {})}
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    cfg = apply_overrides(TrainConfig(), {"run.device": "auto", "optim.amp": True})
    resolved = resolve_device(cfg)
    assert resolved.run.device == expected
    assert resolved.autocast_bf16 == (expected == "gpu")  # bf16 only on GPU workers
    # an explicit device is kept, whatever the cluster offers
    assert resolve_device(apply_overrides(cfg, {"run.device": "cpu"})).run.device == "cpu"
