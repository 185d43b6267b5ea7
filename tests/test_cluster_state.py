"""The worker's ClusterState with PCL's prototypes: the k-means that makes them (one process),
and the checkpoint round trip that a resumed run continues from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clinfo_ray.checkpointing import load_checkpoint, save_checkpoint
from clinfo_ray.config import KMeansSettings, TrainConfig, apply_overrides
from clinfo_ray.losses import concentration
from clinfo_ray.model import build_model
from clinfo_ray.training import cluster_state
from clinfo_ray.training.cluster_state import (
    GRANULARITY_SEED_STRIDE,
    ClusterState,
    PrototypeLevels,
    kmeans_assignment,
    prototype_kmeans,
)
from clinfo_ray.training.embedding import SplitEmbedding

N, DIM = 120, 8


def _embedding(seed: int = 0) -> SplitEmbedding:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, DIM)) * 3
    x = centres[np.arange(N) % 6] + rng.normal(size=(N, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return SplitEmbedding(
        index=np.arange(N),
        features=x.astype(np.float32),
        projections=x.astype(np.float32),
        labels=np.arange(N) % 6,
    )


def _levels(ks: tuple[int, ...] = (4, 9), version: int = 1) -> PrototypeLevels:
    settings = KMeansSettings(seed=3, niter=10)
    return prototype_kmeans(
        _embedding(), N, ks, settings, version, temperature=0.2, dim=DIM, device=torch.device("cpu")
    )


def test_prototype_kmeans_gives_unit_prototypes_of_the_assignment() -> None:
    embedding = _embedding()
    levels = _levels((4, 9, 500))  # 500 > n: capped at n, as kmeans_assignment does
    assert levels.assignments.shape == (3, N) and levels.assignments.dtype == torch.int64
    sizes = levels.prototypes.sizes
    assert sizes[0] == 4 and sizes[1] == 9 and 9 < sizes[2] <= N
    for m, size in enumerate(sizes):
        row = levels.assignments[m].numpy()
        assert sorted(set(row.tolist())) == list(range(size))  # contiguous, none empty
        centroids = levels.prototypes.centroids[m]
        assert centroids.shape == (size, DIM) and centroids.dtype == torch.float32
        torch.testing.assert_close(centroids.norm(dim=1), torch.ones(size))
        for j in (0, size - 1):
            mean = embedding.projections[row == j].mean(0)
            np.testing.assert_allclose(centroids[j], mean / np.linalg.norm(mean), rtol=1e-5)
        phi = levels.prototypes.concentrations[m]
        assert float(phi.mean()) == pytest.approx(0.2, rel=1e-5) and bool((phi > 0).all())
        expected = concentration(embedding.projections, row, 0.2)
        np.testing.assert_allclose(phi.numpy(), expected, rtol=1e-5)
    # the first granularity is what clinfonce-kmeans draws with that k and version
    settings = KMeansSettings(seed=3, niter=10)
    same = kmeans_assignment(embedding, N, 4, settings, 1, torch.device("cpu"))
    assert same.tolist() == levels.assignments[0].tolist()


def test_each_granularity_and_version_draws_its_own_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: list[int] = []
    real = cluster_state.kmeans

    def recording(x: np.ndarray, k: int, settings: KMeansSettings, **kw: bool) -> tuple:
        seeds.append(settings.seed_value)
        return real(x, k, settings, **kw)

    monkeypatch.setattr(cluster_state, "kmeans", recording)
    _levels((4, 4, 9), version=1)
    _levels((4, 4, 9), version=2)
    stride = GRANULARITY_SEED_STRIDE
    assert seeds == [4, 4 + stride, 4 + 2 * stride, 5, 5 + stride, 5 + 2 * stride]


def test_state_dict_round_trip_with_prototypes(tmp_path: Path) -> None:
    levels = _levels()
    state = ClusterState(None)
    state.set_levels(3, levels)
    assert state.version == 3 and state.num_clusters == 4  # the first granularity's
    index = torch.tensor([5, 0, 77])
    assert state.ids(index).tolist() == levels.assignments[0, index].tolist()

    cfg = apply_overrides(TrainConfig(), {"model.cnn_width": 4, "loss.method": "pcl"})
    model = build_model(cfg.model)
    save_checkpoint(tmp_path / "c", model=model, epoch=2, step=4, config=cfg, clusters=state)
    saved = torch.load(tmp_path / "c" / "clusters.pt", weights_only=True)
    assert saved["version"] == 3 and len(saved["centroids"]) == 2
    restored = ClusterState(np.zeros(N, dtype=np.int64))  # other clusters until restored
    load_checkpoint(tmp_path / "c", model=model, clusters=restored)

    assert restored.version == 3 and restored.levels is not None
    assert torch.equal(restored.levels.assignments, levels.assignments)
    for name in ("centroids", "concentrations"):
        for got, want in zip(
            getattr(restored.levels.prototypes, name),
            getattr(levels.prototypes, name),
            strict=True,
        ):
            assert torch.equal(got, want)
    assert restored.levels.ids(index).tolist() == levels.ids(index).tolist()
    assert restored.levels.ids(index).shape == (3, 2)
    assert restored.ids(index).tolist() == state.ids(index).tolist()

    restored.set(4, None)  # another method's clusters drop the prototypes
    assert restored.levels is None and restored.prototypes is None
    assert "centroids" not in restored.state_dict()


def test_a_state_dict_without_prototypes_loads_without_them() -> None:
    state = ClusterState(None)
    state.set_levels(1, _levels())
    state.load_state_dict({"version": 2, "assignment": torch.tensor([1, 0, 1])})
    assert state.levels is None and state.assignment is not None
    assert state.assignment.tolist() == [1, 0, 1]
