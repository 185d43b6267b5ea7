"""Build a cluster assignment table from a dataset, and the statistics written beside it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from clinfo_ray.config import ClustersConfig
from clinfo_ray.data import columns as C

from .from_embeddings import Embeddings, align_embeddings, embedding_kmeans_clusters
from .from_hierarchy import hierarchy_clusters
from .from_tags import TagPresence, tag_presence, tags_kmeans_clusters, top_k_tag_clusters
from .metadata import label_codes, read_metadata, train_mask
from .statistics import UNLABELLED, cluster_statistics
from .table import clusters_for, read_table, validate_table, with_singletons, write_table

log = logging.getLogger(__name__)

# Methods that need only the dataset's metadata columns; `kmeans` clusters the embeddings of a
# trained checkpoint, computed by the caller (clusters/cli.py runs the Ray Data inference pass).
METADATA_METHODS = ("tags", "tags-kmeans", "hierarchy", "labels", "instance")
EMBEDDING_METHODS = ("kmeans",)
INIT_CHOICES = ("afk-mc2", "random", "k-means++")  # kmeans.INIT_METHODS, without importing faiss
GPU_CHOICES: dict[str, bool | str] = {"auto": "auto", "yes": True, "no": False}


@dataclass(frozen=True)
class BuildOptions:
    """Knobs of the table builders that ClustersConfig does not hold (yet).

    tags_include / tags_exclude: restrict the tag vocabulary (`tags`, `tags-kmeans`); an empty
        include list means every tag.
    seed, init: faiss k-means seeding (`tags-kmeans`, `kmeans`); init one of INIT_CHOICES.
    use_gpu: faiss on the GPU: "auto" (when faiss has GPU support and a GPU is present), "yes"
        or "no".
    max_dense_bytes / projection_dim: `tags-kmeans` builds a dense float32 TF-IDF matrix up to
        max_dense_bytes, and a random projection to projection_dim dimensions beyond it.
    """

    tags_include: tuple[str, ...] = ()
    tags_exclude: tuple[str, ...] = ()
    seed: int = 0
    init: str = "afk-mc2"
    use_gpu: str = "auto"
    max_dense_bytes: int = 1 << 30
    projection_dim: int = 256

    def __post_init__(self) -> None:
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {', '.join(INIT_CHOICES)}; got {self.init!r}")
        if self.use_gpu not in GPU_CHOICES:
            raise ValueError(f"use_gpu must be one of auto, yes, no; got {self.use_gpu!r}")
        for name in ("max_dense_bytes", "projection_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)!r}")
        both = sorted(set(self.tags_include) & set(self.tags_exclude))
        if both:
            raise ValueError(f"tag {both[0]!r} is both included and excluded")


# The statistics are always against the downstream label, over the train split.
STATS_COLUMNS = (C.ID, C.LABEL, C.SPLIT)


def stats_path(table_path: str | Path) -> Path:
    """FILE.parquet -> FILE.stats.json beside it."""
    return Path(table_path).with_suffix(".stats.json")


def metadata_columns(config: ClustersConfig) -> list[str]:
    """The dataset columns a method reads (never the image bytes)."""
    extra = {"tags": [C.TAGS], "tags-kmeans": [C.TAGS], "hierarchy": [C.HIERARCHY]}
    return list(dict.fromkeys([*STATS_COLUMNS, *extra.get(config.method, [])]))


def assign_clusters(
    config: ClustersConfig,
    metadata: pa.Table,
    options: BuildOptions = BuildOptions(),
    embeddings: Embeddings | None = None,
) -> tuple[np.ndarray, dict]:
    """(n,) int64 clusters 0..K-1 for the rows of `metadata`, and what the method chose.

    `metadata` holds the columns `metadata_columns(config)` names; `embeddings` (by image id)
    are what the `kmeans` method clusters, and only it. Rows that carry nothing to group them by
    (no label, no tag, too short an ancestor list) are singletons; the details count them.
    """
    if config.method in EMBEDDING_METHODS:
        if embeddings is None:
            raise ValueError(
                f"method {config.method!r} clusters a checkpoint's embeddings: give --checkpoint"
            )
        return kmeans_of_embeddings(config, metadata, options, embeddings)
    if embeddings is not None:
        raise ValueError(f"method {config.method!r} does not use embeddings")
    if config.method == "instance":
        return np.arange(metadata.num_rows, dtype=np.int64), {}
    if config.method == "labels":
        unlabelled = int(metadata[C.LABEL].null_count)
        return column_clusters(metadata[C.LABEL]), {"column": C.LABEL, "singleton_rows": unlabelled}
    if config.method == "hierarchy":
        clusters, alone = hierarchy_clusters(metadata[C.HIERARCHY], config.hierarchy_level)
        details = {"column": C.HIERARCHY, "level": config.hierarchy_level, "singleton_rows": alone}
        return clusters, details
    presence = tag_presence(
        metadata[C.TAGS], train_mask(metadata), options.tags_include, options.tags_exclude
    )
    untagged = int((~presence.has_tags).sum())
    if config.method == "tags":
        clusters, chosen = top_k_tag_clusters(presence, config.top_k, config.tag_ranking)
        has_chosen = np.isin(presence.cols, np.flatnonzero(np.isin(presence.vocabulary, chosen)))
        none_of_k = presence.num_rows - np.unique(presence.rows[has_chosen]).size
        # the paper's all-zero cluster: rows with none of the k tags, the untagged ones included
        return clusters, _tag_details(presence, untagged, 0, tags=chosen, all_zero_rows=none_of_k)
    clusters = tags_kmeans_clusters(
        presence,
        config.k,
        niter=config.niter,
        nredo=config.nredo,
        seed=options.seed,
        init=options.init,
        use_gpu=GPU_CHOICES[options.use_gpu],
        max_dense_bytes=options.max_dense_bytes,
        projection_dim=options.projection_dim,
    )
    return clusters, _tag_details(presence, untagged, untagged)  # untagged: singletons


def _tag_details(
    presence: TagPresence, untagged: int, singletons: int, **extra: Any
) -> dict[str, Any]:
    """What a tag method records: vocabulary size, the rows without a vocabulary tag and how
    many rows the method made singletons."""
    return {
        "tag_vocabulary_size": len(presence.vocabulary),
        "untagged_rows": untagged,
        "singleton_rows": singletons,
        **extra,
    }


def kmeans_of_embeddings(
    config: ClustersConfig, metadata: pa.Table, options: BuildOptions, embeddings: Embeddings
) -> tuple[np.ndarray, dict]:
    """Spherical k-means of the train rows' embeddings; every row to its nearest centroid."""
    vectors, has = align_embeddings(embeddings, metadata[C.ID])  # (n, D), (n,)
    clusters, details = embedding_kmeans_clusters(
        vectors,
        has,
        train_mask(metadata),
        config.k,
        niter=config.niter,
        nredo=config.nredo,
        seed=options.seed,
        init=options.init,
        use_gpu=GPU_CHOICES[options.use_gpu],
    )
    return clusters, {**details, "embeddings": embeddings.source}


def column_clusters(column: pa.ChunkedArray) -> np.ndarray:
    """One cluster per distinct value of a column; a row whose value is null is its own
    (singleton) cluster, since nothing says which other rows it belongs with."""
    codes = label_codes(column)
    return with_singletons(codes, codes == UNLABELLED)


def table_statistics(table: pa.Table, metadata: pa.Table) -> dict[str, Any]:
    """cluster_statistics over the train split of a validated table against the dataset's
    labels. `metadata` holds the columns STATS_COLUMNS."""
    train = train_mask(metadata)
    clusters = clusters_for(table, metadata[C.ID])
    labels = label_codes(metadata[C.LABEL])
    return cluster_statistics(clusters[train], labels[train])


def build_clusters(
    config: ClustersConfig,
    data_dir: str | Path,
    out: str | Path,
    options: BuildOptions = BuildOptions(),
    embeddings: Embeddings | None = None,
) -> dict:
    """Write the assignment table to `out` and its statistics to FILE.stats.json; return them.

    `embeddings`: the image vectors the `kmeans` method clusters (see `assign_clusters`).
    """
    metadata = read_metadata(data_dir, metadata_columns(config))
    clusters, details = assign_clusters(config, metadata, options, embeddings)
    table = pa.table({C.ID: metadata[C.ID], C.CLUSTER: clusters})
    validate_table(table, metadata[C.ID])  # the dataset itself may break the contract
    write_table(out, metadata[C.ID], clusters)
    record = {
        **table_statistics(table, metadata),
        "num_clusters_all_splits": int(clusters.max(initial=-1) + 1),
        "method": config.method,
        "details": details,
        "config": dataclasses.asdict(config),
        "options": dataclasses.asdict(options),
        "data": str(data_dir),
    }
    _write_json(stats_path(out), record)
    return record


def statistics_of_table(table_path: str | Path, data_dir: str | Path) -> dict:
    """Validate an existing table against a dataset and compute its statistics."""
    metadata = read_metadata(data_dir, STATS_COLUMNS)
    table = validate_table(read_table(table_path), metadata[C.ID])
    return table_statistics(table, metadata)


def _write_json(path: Path, record: dict) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(path)
    log.info("wrote %s", path)
