"""The clusters a training run uses, on each worker: a fixed table, or k-means rebuilt in the loop.

The stream gives each image's ``index`` (its row in the train split, ids sorted); a worker maps
it to a cluster through an (n_train,) assignment, so a new k-means table needs no new stream.
Version 0 is the run's starting table (``clusters.assignment.clusters_by_index``); version v >= 1
the v-th k-means of the model's own embeddings, computed on rank 0 and broadcast. PCL's version
v >= 1 holds M k-means (``loss.pcl_ks``) with their prototypes: :class:`PrototypeLevels`; its
assignment (the one :meth:`ClusterState.ids` maps to and :func:`publish` writes) is the first
granularity's, so the order of ``loss.pcl_ks`` picks the table a run publishes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clinfo_ray.clusters.assignment import train_ids
from clinfo_ray.clusters.kmeans import kmeans
from clinfo_ray.clusters.statistics import cluster_statistics
from clinfo_ray.clusters.table import contiguous, write_table
from clinfo_ray.config import KMeansSettings
from clinfo_ray.distributed import broadcast_from_rank0, rank
from clinfo_ray.losses.pcl import Prototypes, prototypes_of
from clinfo_ray.storage import location as loc
from clinfo_ray.training.embedding import SplitEmbedding

log = logging.getLogger(__name__)
# Granularity m of PCL's k-means draws from seed + version + m * this: the first granularity
# draws what clinfonce-kmeans draws, and no two (version, granularity) pairs share a seed.
GRANULARITY_SEED_STRIDE = 1 << 20


@dataclass(frozen=True)
class PrototypeLevels:
    """PCL's M granularities: (M, n_train) int64 assignments (row m in 0..K_m-1, every id with
    a member) and each granularity's prototypes, on one device."""

    assignments: torch.Tensor
    prototypes: Prototypes

    def __post_init__(self) -> None:
        levels = self.assignments.shape[0] if self.assignments.dim() == 2 else -1
        if levels != len(self.prototypes.centroids):
            raise ValueError(
                f"assignments must be (M, n) for M = {len(self.prototypes.centroids)} "
                f"granularities; got {tuple(self.assignments.shape)}"
            )

    def to(self, device: torch.device) -> PrototypeLevels:
        return PrototypeLevels(self.assignments.to(device), self.prototypes.to(device))

    def ids(self, index: torch.Tensor) -> torch.Tensor:
        """(B, M) int64 clusters of each image of a batch, on the device of ``index``."""
        return self.assignments[:, index.to(self.assignments.device)].T.to(index.device)


class ClusterState:
    """One worker's clusters: the version, the (n_train,) assignment and its copy on the
    worker's device, and for PCL the :class:`PrototypeLevels` (on the device too). Changed in
    place (:meth:`set`, :meth:`set_levels`, :meth:`load_state_dict`), like an optimizer, so a
    checkpoint saves and restores it as one of its parts (``clusters.pt``)."""

    def __init__(
        self, assignment: np.ndarray | None, version: int = 0, device: torch.device | None = None
    ) -> None:
        self.device = device or torch.device("cpu")
        self.set(version, assignment)

    def set(self, version: int, assignment: np.ndarray | None) -> None:
        """Take a new assignment ((n_train,) int64; None: every image its own cluster); no
        prototypes."""
        self.version = version
        # an own, writable copy: the caller's may be read-only, or change later
        self.assignment = None if assignment is None else np.array(assignment, dtype=np.int64)
        self._on_device = (
            None if self.assignment is None else torch.from_numpy(self.assignment).to(self.device)
        )
        self.levels: PrototypeLevels | None = None

    def set_levels(self, version: int, levels: PrototypeLevels) -> None:
        """Take PCL's granularities; the assignment becomes the first one's."""
        self.set(version, levels.assignments[0].cpu().numpy())
        self.levels = levels.to(self.device)

    @property
    def prototypes(self) -> Prototypes | None:
        return None if self.levels is None else self.levels.prototypes

    def ids(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) int64 cluster of each image of a batch, on the device of ``index``."""
        if self._on_device is None:
            return index
        return self._on_device[index.to(self._on_device.device)].to(index.device)

    @property
    def num_clusters(self) -> int | None:
        return None if self.assignment is None else int(self.assignment.max()) + 1

    def state_dict(self) -> dict[str, Any]:
        """Plain data for ``torch.load(weights_only=True)``: the version and CPU tensors (PCL's
        granularities as lists of tensors, only when there are some)."""
        assignment = None if self.assignment is None else torch.from_numpy(self.assignment)
        state: dict[str, Any] = {"version": self.version, "assignment": assignment}
        if self.levels is not None:
            prototypes = self.levels.prototypes
            state["prototype_assignments"] = self.levels.assignments.cpu()
            state["centroids"] = [c.cpu() for c in prototypes.centroids]
            state["concentrations"] = [p.cpu() for p in prototypes.concentrations]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version = int(state["version"])
        if state.get("prototype_assignments") is not None:
            prototypes = Prototypes(tuple(state["centroids"]), tuple(state["concentrations"]))
            self.set_levels(version, PrototypeLevels(state["prototype_assignments"], prototypes))
            return
        saved = state["assignment"]
        self.set(version, None if saved is None else saved.cpu().numpy())


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
        projections = _complete(embedding, n)
        assignment.copy_(torch.from_numpy(_spherical_kmeans(projections, k, settings, version)))
    broadcast_from_rank0(assignment)
    return assignment.cpu().numpy()


def prototype_kmeans(
    embedding: SplitEmbedding | None,
    n: int,
    ks: Sequence[int],
    settings: KMeansSettings,
    version: int,
    *,
    temperature: float,
    dim: int,
    device: torch.device,
) -> PrototypeLevels:
    """PCL's granularities, every rank the same: on rank 0 one spherical k-means of the
    normalised projections per k of ``ks`` (empty clusters removed; granularity m seeded by
    ``settings``' seed + version + m·GRANULARITY_SEED_STRIDE), each cluster's prototype and
    concentration (mean ``temperature``: ``losses.pcl.prototypes_of``); broadcast to every
    rank. ``embedding``: the whole train split on rank 0, None elsewhere; ``dim``: the
    projections' width (every rank allocates the broadcast before it knows the K_m)."""
    assignments = torch.empty(len(ks), n, dtype=torch.int64, device=device)  # (M, n)
    sizes = torch.zeros(len(ks), dtype=torch.int64, device=device)  # (M,) K_m
    tables: list[np.ndarray] = []  # rank 0: (K_m, dim + 1) centroids | concentration
    if rank() == 0:
        projections = _complete(embedding, n)
        for m, k in enumerate(ks):
            seeded = version + m * GRANULARITY_SEED_STRIDE
            clusters = _spherical_kmeans(projections, k, settings, seeded)
            centroids, phi = prototypes_of(projections, clusters, temperature)
            assignments[m].copy_(torch.from_numpy(clusters))
            sizes[m] = centroids.shape[0]
            tables.append(np.concatenate([centroids, phi[:, None]], axis=1))
    broadcast_from_rank0(sizes)
    broadcast_from_rank0(assignments)
    packed = torch.empty(int(sizes.sum()), dim + 1, dtype=torch.float32, device=device)
    if rank() == 0:
        packed.copy_(torch.from_numpy(np.concatenate(tables)))
    broadcast_from_rank0(packed)  # (sum K_m, dim + 1)
    parts = torch.split(packed, sizes.tolist())
    prototypes = Prototypes(
        tuple(p[:, :dim].contiguous() for p in parts), tuple(p[:, dim].contiguous() for p in parts)
    )
    return PrototypeLevels(assignments, prototypes)


def _complete(embedding: SplitEmbedding | None, n: int) -> np.ndarray:
    """Rank 0's (n, P) projections of the whole train split, checked complete."""
    assert embedding is not None, "rank 0 holds the gathered embeddings"
    if not np.array_equal(embedding.index, np.arange(n)):
        raise RuntimeError(
            f"k-means needs all {n} train images embedded; got {embedding.index.size}"
        )
    return embedding.projections


def _spherical_kmeans(
    projections: np.ndarray, k: int, settings: KMeansSettings, draw: int
) -> np.ndarray:
    """(n,) int64 contiguous clusters of spherical k-means seeded by ``settings``' seed + draw."""
    drawn = dataclasses.replace(settings, seed=settings.seed_value + draw)
    clusters, _ = kmeans(projections, min(k, projections.shape[0]), drawn, spherical=True)
    return contiguous(clusters)


def publish(
    state: ClusterState, labels: np.ndarray, dataset_dir: str, run_dir: str
) -> dict[str, Any]:
    """Rank 0: write the table (``clusters/kmeans-vNNNN.parquet``; PCL: its first granularity's)
    and its statistics beside it (``.stats.json``; PCL: with every granularity's number of
    clusters, ``prototype_clusters``); return the statistics. ``labels``: (n_train,) int64 by
    index, -1 where unlabelled."""
    assert state.assignment is not None, "a k-means version has an assignment"
    path = loc.join(run_dir, "clusters", f"kmeans-v{state.version:04d}.parquet")  # or a URI
    write_table(path, train_ids(dataset_dir), state.assignment)
    stats = cluster_statistics(state.assignment, labels)
    record = {**stats, "version": state.version, "table": path}
    if state.prototypes is not None:  # PCL: the table is the first granularity's
        record["prototype_clusters"] = list(state.prototypes.sizes)
    loc.write_text(loc.with_suffix(path, ".stats.json"), json.dumps(record, indent=2) + "\n")
    log.debug("clusters v%d: %d clusters -> %s", state.version, stats["num_clusters"], path)
    return record
