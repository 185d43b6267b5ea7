"""The clusters a training run uses, on each worker: a fixed table, or k-means rebuilt in the loop.

The stream gives each image's ``index`` (its row in the train split, ids sorted); a worker maps
it to a cluster through an (n_train,) assignment, so a new k-means table needs no new stream.
Version 0 is the run's starting table (``clusters.assignment.clusters_by_index``); version v >= 1
the v-th k-means of the model's own embeddings, computed on rank 0 and broadcast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clinfo_ray.clusters.assignment import train_ids
from clinfo_ray.clusters.kmeans import kmeans
from clinfo_ray.clusters.statistics import cluster_statistics
from clinfo_ray.clusters.table import contiguous, write_table
from clinfo_ray.config import KMeansSettings
from clinfo_ray.distributed import broadcast_from_rank0, rank
from clinfo_ray.training.embedding import SplitEmbedding

log = logging.getLogger(__name__)


class ClusterState:
    """One worker's clusters: the version, the (n_train,) assignment and its copy on the
    worker's device. Changed in place (:meth:`set`, :meth:`load_state_dict`), like an optimizer,
    so a checkpoint saves and restores it as one of its parts (``clusters.pt``)."""

    def __init__(
        self, assignment: np.ndarray | None, version: int = 0, device: torch.device | None = None
    ) -> None:
        self.device = device or torch.device("cpu")
        self.set(version, assignment)

    def set(self, version: int, assignment: np.ndarray | None) -> None:
        """Take a new assignment ((n_train,) int64; None: every image its own cluster)."""
        self.version = version
        # an own, writable copy: the caller's may be read-only, or change later
        self.assignment = None if assignment is None else np.array(assignment, dtype=np.int64)
        self._on_device = (
            None if self.assignment is None else torch.from_numpy(self.assignment).to(self.device)
        )

    def ids(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) int64 cluster of each image of a batch, on the device of ``index``."""
        if self._on_device is None:
            return index
        return self._on_device[index.to(self._on_device.device)].to(index.device)

    @property
    def num_clusters(self) -> int | None:
        return None if self.assignment is None else int(self.assignment.max()) + 1

    def state_dict(self) -> dict[str, Any]:
        """Plain data for ``torch.load(weights_only=True)``: the version and a CPU tensor."""
        assignment = None if self.assignment is None else torch.from_numpy(self.assignment)
        return {"version": self.version, "assignment": assignment}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["assignment"]
        self.set(int(state["version"]), None if saved is None else saved.cpu().numpy())


def kmeans_assignment(
    embedding: SplitEmbedding | None,
    n: int,
    k: int,
    settings: KMeansSettings,
    version: int,
    device: torch.device,
) -> np.ndarray:
    """(n,) int64 spherical k-means clusters (empty ones removed) of the normalised projections
    on rank 0, broadcast to every rank. ``embedding``: the whole train split on rank 0, None on
    the others; ``n``: the train split's size; the seed is ``settings``' plus ``version``, so each
    re-clustering draws anew and a resumed run draws the same."""
    assignment = torch.empty(n, dtype=torch.int64, device=device)
    if rank() == 0:
        assert embedding is not None, "rank 0 holds the gathered embeddings"
        if not np.array_equal(embedding.index, np.arange(n)):
            raise RuntimeError(
                f"k-means needs all {n} train images embedded; got {embedding.index.size}"
            )
        drawn = dataclasses.replace(settings, seed=settings.seed_value + version)
        clusters, _ = kmeans(embedding.projections, min(k, n), drawn, spherical=True)
        assignment.copy_(torch.from_numpy(contiguous(clusters)))
    broadcast_from_rank0(assignment)
    return assignment.cpu().numpy()


def publish(
    state: ClusterState, labels: np.ndarray, dataset_dir: str, run_dir: Path
) -> dict[str, Any]:
    """Rank 0: write the table (``clusters/kmeans-vNNNN.parquet``) and its statistics beside it
    (``.stats.json``); return the statistics. ``labels``: (n_train,) int64 by index, -1 where
    unlabelled."""
    assert state.assignment is not None, "a k-means version has an assignment"
    path = run_dir / "clusters" / f"kmeans-v{state.version:04d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(path, train_ids(dataset_dir), state.assignment)
    stats = cluster_statistics(state.assignment, labels)
    record = {**stats, "version": state.version, "table": str(path)}
    path.with_suffix(".stats.json").write_text(json.dumps(record, indent=2) + "\n")
    log.debug("clusters v%d: %d clusters -> %s", state.version, stats["num_clusters"], path)
    return record
