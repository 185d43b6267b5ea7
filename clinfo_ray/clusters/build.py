"""Build a cluster assignment table from a dataset, and the statistics written beside it."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from clinfo_ray.config import ClustersConfig
from clinfo_ray.data import columns as C
from clinfo_ray.storage import location as loc

from .from_embeddings import Embeddings, align_embeddings, embedding_kmeans_clusters
from .from_hierarchy import hierarchy_clusters
from .from_labels import label_clusters
from .from_tags import TagPresence, tag_presence, tags_kmeans_clusters, top_k_tag_clusters
from .metadata import label_codes, read_metadata, train_mask
from .statistics import UNLABELLED, cluster_statistics
from .table import clusters_for, read_table, validate_table, write_table

log = logging.getLogger(__name__)

# Methods that cluster the embeddings of a trained checkpoint, computed by the caller
# (commands/clusters.py runs the Ray Data inference pass); the others read metadata columns only.
EMBEDDING_METHODS = ("kmeans",)
# The statistics are always against the downstream label, over the train split. C.LABEL stands
# for the configured label column (data.label_column): read_metadata presents it under that name.
STATS_COLUMNS = (C.ID, C.LABEL, C.SPLIT)


def stats_path(table_path: str | Path) -> str:
    """FILE.parquet -> FILE.stats.json beside it (a URI stays a URI)."""
    return loc.with_suffix(table_path, ".stats.json")


def metadata_columns(config: ClustersConfig) -> list[str]:
    """The dataset columns a method reads (never the image bytes)."""
    extra: dict[str | None, list[str]] = {
        "tags": [C.TAGS],
        "tags-kmeans": [C.TAGS],
        "hierarchy": [C.HIERARCHY],
    }
    return list(dict.fromkeys([*STATS_COLUMNS, *extra.get(config.method, [])]))


def assign_clusters(
    config: ClustersConfig,
    metadata: pa.Table,
    embeddings: Embeddings | None = None,
    *,
    label_column: str = C.LABEL,
) -> tuple[np.ndarray, dict]:
    """(n,) int64 clusters 0..K-1 for the rows of `metadata`, and what the method chose.

    `config.method` says how (it must be set: a run resolves it with TrainConfig.run_clusters);
    `metadata` holds the columns `metadata_columns(config)` names, the label under C.LABEL
    whichever dataset column it is (`label_column`, recorded by the `labels` method);
    `embeddings` (by image id) are what the `kmeans` method clusters, and only it. Rows that
    carry nothing to group them by (no label, no tag, too short an ancestor list) are
    singletons; the details count them.
    """
    _require_method(config)
    if config.method in EMBEDDING_METHODS:
        if embeddings is None:
            raise ValueError(
                f"method {config.method!r} clusters a checkpoint's embeddings: give --checkpoint"
            )
        return kmeans_of_embeddings(config, metadata, embeddings)
    if embeddings is not None:
        raise ValueError(f"method {config.method!r} does not use embeddings")
    if config.method == "instance":
        return np.arange(metadata.num_rows, dtype=np.int64), {}
    if config.method == "labels":
        return labels_of(config, metadata, label_column)
    if config.method == "hierarchy":
        clusters, alone = hierarchy_clusters(metadata[C.HIERARCHY], config.hierarchy_level)
        details = {"column": C.HIERARCHY, "level": config.hierarchy_level, "singleton_rows": alone}
        return clusters, details
    presence = tag_presence(
        metadata[C.TAGS], train_mask(metadata), config.tags_include, config.tags_exclude
    )
    untagged = int((~presence.has_tags).sum())
    if config.method == "tags":
        clusters, chosen = top_k_tag_clusters(presence, config.top_k, config.tag_ranking)
        has_chosen = np.isin(presence.cols, np.flatnonzero(np.isin(presence.vocabulary, chosen)))
        none_of_k = presence.num_rows - np.unique(presence.rows[has_chosen]).size
        # the paper's all-zero cluster: rows with none of the k tags, the untagged ones included
        return clusters, _tag_details(presence, untagged, 0, tags=chosen, all_zero_rows=none_of_k)
    clusters = tags_kmeans_clusters(presence, config)
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
    config: ClustersConfig, metadata: pa.Table, embeddings: Embeddings
) -> tuple[np.ndarray, dict]:
    """Spherical k-means of the train rows' embeddings; every row to its nearest centroid."""
    vectors, has = align_embeddings(embeddings, metadata[C.ID])  # (n, D), (n,)
    clusters, details = embedding_kmeans_clusters(
        vectors, has, train_mask(metadata), config.k, config.kmeans
    )
    return clusters, {**details, "embeddings": embeddings.source}


def labels_of(
    config: ClustersConfig, metadata: pa.Table, label_column: str
) -> tuple[np.ndarray, dict]:
    """The `labels` method: one cluster per label, or each label split into
    `config.label_split` parts, or the labels merged into `config.label_merge` groups, drawn
    from `config.label_draw_seed` (clusters.from_labels). An unlabelled row is a singleton,
    since nothing says which other rows it belongs with."""
    codes = label_codes(metadata[C.LABEL])
    clusters, drawn = label_clusters(
        codes,
        train_mask(metadata),
        split=config.label_split,
        merge=config.label_merge,
        seed=config.label_draw_seed_value,
    )
    alone = int((codes == UNLABELLED).sum())
    return clusters, {"column": label_column, **drawn, "singleton_rows": alone}


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
    embeddings: Embeddings | None = None,
    *,
    label_column: str = C.LABEL,
) -> dict:
    """Write the assignment table to `out` and its statistics to FILE.stats.json; return them.

    Everything comes from `config` (`config.method` set, see `assign_clusters`); `embeddings`:
    the image vectors the `kmeans` method clusters; `label_column` (data.label_column): the
    downstream label, what the `labels` method groups by and the statistics are against. The
    record keeps the config as a plain dict, and the label column.
    """
    _require_method(config)
    metadata = read_metadata(data_dir, metadata_columns(config), label_column=label_column)
    clusters, details = assign_clusters(config, metadata, embeddings, label_column=label_column)
    table = pa.table({C.ID: metadata[C.ID], C.CLUSTER: clusters})
    validate_table(table, metadata[C.ID])  # the dataset itself may break the contract
    write_table(out, metadata[C.ID], clusters)
    record = {
        **table_statistics(table, metadata),
        "num_clusters_all_splits": int(clusters.max(initial=-1) + 1),
        "method": config.method,
        "label_column": label_column,
        "details": details,
        "config": dataclasses.asdict(config),
        "data": str(data_dir),
    }
    _write_json(stats_path(out), record)
    return record


def statistics_of_table(
    table_path: str | Path, data_dir: str | Path, *, label_column: str = C.LABEL
) -> dict:
    """Validate an existing table against a dataset and compute its statistics against the
    labels of `label_column` (data.label_column)."""
    metadata = read_metadata(data_dir, STATS_COLUMNS, label_column=label_column)
    table = validate_table(read_table(table_path), metadata[C.ID])
    return table_statistics(table, metadata)


def _require_method(config: ClustersConfig) -> None:
    if config.method is None:
        raise ValueError(
            "clusters.method is not set: name one (a training run resolves it from loss.method, "
            "TrainConfig.run_clusters)"
        )


def _write_json(path: str, record: dict) -> None:
    loc.write_text(path, json.dumps(record, indent=2) + "\n")  # atomic
    log.info("wrote %s", path)
