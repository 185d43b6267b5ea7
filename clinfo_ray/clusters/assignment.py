"""A training run's clusters by ``index``: the image's position in its train split's sorted ids.

The stream hands each image's ``index`` (``clinfo_ray.data.manifest.sorted_ids``), never its
cluster; a worker looks the cluster up in the (n_train,) array of :func:`clusters_by_index`, so
a new k-means table needs no new stream. :func:`train_ids` gives the ids in that order, to write
an array of clusters by index back as a table (``table.write_table``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import sorted_ids, split_files

from .metadata import read_metadata
from .table import clusters_for, read_table, validate_table


def train_ids(dataset_dir: str | Path) -> pa.Array:
    """(n_train,) string: the train split's ids in ``index`` order (sorted)."""
    return sorted_ids(split_files(dataset_dir, C.TRAIN))


def clusters_by_index(dataset_dir: str | Path, table_path: str | Path | None) -> np.ndarray | None:
    """(n_train,) int64: the cluster of each train ``index``, from the table at ``table_path``.

    None when ``table_path`` is None: instance clusters (an image's cluster is its index). The
    table is checked against every id of the dataset first (``table.validate_table``: missing,
    unknown or repeated ids, non-integer or non-contiguous clusters, each named with an
    example), so a table that does not fit fails here, not in the middle of an epoch.
    """
    if table_path is None:
        return None
    dataset_ids = read_metadata(dataset_dir, [C.ID])[C.ID]
    table = validate_table(read_table(table_path), dataset_ids)
    return clusters_for(table, train_ids(dataset_dir))
