"""The clusters a training run uses, on each worker: a fixed table, or k-means rebuilt in the loop.

The stream gives each image's ``index`` (its row in the train split, ids sorted); a worker maps
it to a cluster through an (n_train,) array, so a new k-means table needs no new stream.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clinfo_ray.clusters.kmeans import kmeans
from clinfo_ray.clusters.statistics import cluster_statistics
from clinfo_ray.clusters.table import contiguous, write_table
from clinfo_ray.config import ClustersConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import split_files
from clinfo_ray.data.stream import ClusterLookup
from clinfo_ray.distributed import broadcast_from_rank0, rank
from clinfo_ray.training.embedding import SplitEmbedding

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "clusters.pt"  # the assignment inside a checkpoint directory


@dataclass
class ClusterState:
    """Version 0 is the run's starting table (instance ids when ``assignment`` is None)."""

    version: int
    assignment: torch.Tensor | None  # (n_train,) int64 cluster of each index

    def ids(self, index: torch.Tensor) -> torch.Tensor:
        if self.assignment is None:
            return index
        return self.assignment.to(index.device)[index]

    @property
    def num_clusters(self) -> int | None:
        return None if self.assignment is None else int(self.assignment.max()) + 1


def table_assignment(dataset_dir: str, table_path: str | None) -> torch.Tensor | None:
    """(n_train,) clusters of a table, ordered as the stream's ``index``; None: instances."""
    if table_path is None:
        return None
    lookup = ClusterLookup.build(split_files(dataset_dir, C.TRAIN), table_path)
    return torch.from_numpy(lookup.clusters.to_numpy().astype(np.int64))


def recluster(
    embedding: SplitEmbedding, cfg: ClustersConfig, seed: int, version: int, device: torch.device
) -> ClusterState:
    """Spherical faiss k-means of the normalised projections on rank 0, broadcast to all."""
    n = len(embedding.index)
    if not np.array_equal(embedding.index, np.arange(n)):
        raise RuntimeError(f"k-means needs every train image embedded; got {n} of them")
    assignment = torch.empty(n, dtype=torch.int64, device=device)
    if rank() == 0:
        clusters, _ = kmeans(
            embedding.projections,
            min(cfg.k, n),
            niter=cfg.niter,
            nredo=cfg.nredo,
            seed=seed + version,
            spherical=True,
        )
        assignment.copy_(torch.from_numpy(contiguous(clusters)))  # empty clusters removed
    broadcast_from_rank0(assignment)
    return ClusterState(version=version, assignment=assignment.cpu())


def publish(
    state: ClusterState, embedding: SplitEmbedding, dataset_dir: str, run_dir: Path
) -> dict[str, Any]:
    """Rank 0: write the table (``clusters/kmeans-vNNNN.parquet``) and its statistics."""
    assert state.assignment is not None
    lookup = ClusterLookup.build(split_files(dataset_dir, C.TRAIN), None)
    path = run_dir / "clusters" / f"kmeans-v{state.version:04d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    clusters = state.assignment.numpy()
    write_table(path, lookup.ids, clusters)
    stats = cluster_statistics(clusters, embedding.labels)
    record = {**stats, "version": state.version, "table": str(path)}
    path.with_suffix(".stats.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("clusters v%d: %d clusters -> %s", state.version, stats["num_clusters"], path)
    return record


def save_state(state: ClusterState, checkpoint_dir: Path) -> None:
    if state.assignment is not None:
        torch.save(
            {"version": state.version, "assignment": state.assignment},
            checkpoint_dir / CHECKPOINT_FILE,
        )


def load_state(checkpoint_dir: Path, fallback: ClusterState) -> ClusterState:
    path = checkpoint_dir / CHECKPOINT_FILE
    if not path.is_file():
        return fallback
    saved = torch.load(path, weights_only=True)
    return ClusterState(version=int(saved["version"]), assignment=saved["assignment"])
