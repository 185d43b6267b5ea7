"""Cluster assignment tables: Parquet with `id` (string) and `cluster` (int64, 0..K-1).

One row per image of the dataset, every id once, cluster ids contiguous. `validate_table` checks
all of that against the dataset's ids and names, for each problem, how many rows have it and one
example, so that a table made elsewhere (by hand, by another tool) fails before training starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clinfo_ray.data import columns as C
from clinfo_ray.storage import location as loc


class ClusterTableError(ValueError):
    """A cluster assignment table that does not fit its dataset."""


def contiguous(values: np.ndarray) -> np.ndarray:
    """Relabel any (n,) values to int64 cluster ids 0..K-1, in sorted order of the values."""
    return np.unique(np.asarray(values), return_inverse=True)[1].reshape(-1).astype(np.int64)


def with_singletons(codes: np.ndarray, alone: np.ndarray) -> np.ndarray:
    """Cluster ids 0..K-1 from (n,) int64 `codes`, except that every row where `alone` is True
    gets a cluster of its own (its code is ignored): rows that carry no information about what
    they belong with (no label, no tag, no ancestor) must not share a cluster."""
    codes = np.asarray(codes, dtype=np.int64).copy()
    alone = np.asarray(alone, dtype=bool)
    start = int(codes[~alone].max(initial=-1)) + 1
    codes[alone] = start + np.arange(int(alone.sum()), dtype=np.int64)
    return contiguous(codes)


def write_table(path: str | Path, ids: pa.Array | pa.ChunkedArray, clusters: np.ndarray) -> str:
    """Write an assignment table atomically (a temporary file renamed into place, or uploaded
    as one object) at a local path or a URI; returns where."""
    clusters = np.asarray(clusters)
    if len(ids) != len(clusters):
        raise ValueError(f"{len(ids)} ids but {len(clusters)} clusters")
    table = pa.table(
        {C.ID: pa.array(ids, type=pa.string()), C.CLUSTER: pa.array(clusters, type=pa.int64())},
        schema=C.CLUSTER_SCHEMA,
    )
    with loc.local_output(path) as partial:
        pq.write_table(table, partial)
    return str(path)


def read_table(path: str | Path) -> pa.Table:
    """Read an assignment table with columns `id` and `cluster` as they are stored.

    Call `validate_table` before using it: it checks types, completeness and contiguity.
    """
    if not loc.is_file(path):
        raise FileNotFoundError(f"no cluster table at {path}")
    filesystem, on_fs = loc.resolve(path)
    schema = pq.read_schema(on_fs, filesystem=filesystem)
    missing = [name for name in (C.ID, C.CLUSTER) if name not in schema.names]
    if missing:
        raise ClusterTableError(
            f"{path}: a cluster table needs columns {C.ID!r} and {C.CLUSTER!r}; "
            f"{missing[0]!r} is missing (columns: {', '.join(schema.names)})"
        )
    return pq.read_table(on_fs, columns=[C.ID, C.CLUSTER], filesystem=filesystem)


def validate_table(table: pa.Table, dataset_ids: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Check a table against the dataset's ids; return it as (id string, cluster int64).

    Raises ClusterTableError listing every problem found: ids of the dataset missing from the
    table, ids not in the dataset, duplicate ids, null or non-integer clusters, negative or
    non-contiguous cluster ids.
    """
    problems: list[str] = []
    ids = pc.cast(table[C.ID], pa.string()).combine_chunks()
    dataset_ids = pc.cast(dataset_ids, pa.string())
    problems += _id_problems(ids, dataset_ids)
    clusters, cluster_problems = _integer_clusters(ids, table[C.CLUSTER])
    problems += cluster_problems
    if not cluster_problems:
        problems += _contiguity_problems(clusters)
    if problems:
        raise ClusterTableError("bad cluster table: " + "; ".join(problems))
    return pa.table({C.ID: ids, C.CLUSTER: clusters}, schema=C.CLUSTER_SCHEMA)


def clusters_for(table: pa.Table, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n,) int64 clusters of the given ids, from a validated table holding all of them."""
    positions = pc.index_in(pc.cast(ids, pa.string()), value_set=table[C.ID].combine_chunks())
    if positions.null_count:
        raise ClusterTableError(f"{positions.null_count} ids are not in the cluster table")
    clusters = table[C.CLUSTER].to_numpy()
    return clusters[positions.to_numpy()].astype(np.int64)


def _id_problems(ids: pa.Array, dataset_ids: pa.ChunkedArray) -> list[str]:
    problems = []
    known = pc.is_in(ids, value_set=dataset_ids.combine_chunks())
    extra = pc.filter(ids, pc.invert(pc.fill_null(known, False)))
    if len(extra):
        problems.append(f"{len(extra)} ids are not in the dataset, e.g. {_example(extra)}")
    present = pc.is_in(dataset_ids, value_set=ids)
    missing = pc.filter(dataset_ids, pc.invert(present))
    if len(missing):
        problems.append(
            f"{len(missing)} ids of the dataset are missing from the table, e.g. "
            f"{_example(missing)}"
        )
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        problems.append(f"{len(repeated)} ids appear more than once, e.g. {_example(repeated)}")
    if ids.null_count:
        problems.append(f"{ids.null_count} rows have a null id")
    return problems


def _integer_clusters(ids: pa.Array, column: pa.ChunkedArray) -> tuple[pa.Array, list[str]]:
    column = column.combine_chunks()
    kind = column.type
    if pa.types.is_integer(kind):
        bad = pc.is_null(column)
    elif pa.types.is_floating(kind):
        # NaN and inf are not integers either.
        whole = pc.and_(pc.is_finite(column), pc.equal(column, pc.floor(column)))
        bad = pc.invert(pc.fill_null(whole, False))
    else:
        bad = pa.array(np.ones(len(column), dtype=bool))
    n_bad = pc.sum(bad).as_py() or 0
    if n_bad:
        first = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        message = (
            f"{n_bad} rows have a non-integer cluster (column type {kind}), e.g. id "
            f"{ids[first].as_py()!r} has {column[first].as_py()!r}"
        )
        return pa.array([], type=pa.int64()), [message]
    return pc.cast(column, pa.int64()), []


def _contiguity_problems(clusters: pa.Array) -> list[str]:
    values = clusters.to_numpy()
    if values.size == 0:
        return []
    if values.min() < 0:
        return [f"{int((values < 0).sum())} rows have a negative cluster, e.g. {values.min()}"]
    distinct = np.unique(values)  # sorted; contiguous iff distinct[i] == i for every i
    if distinct[-1] == distinct.size - 1:
        return []
    first_gap = int(np.flatnonzero(distinct != np.arange(distinct.size))[0])
    return [
        f"cluster ids must be contiguous 0..K-1: {int(distinct[-1]) + 1 - distinct.size} of "
        f"0..{int(distinct[-1])} are unused, e.g. {first_gap}"
    ]


def _example(values: pa.Array) -> str:
    return repr(values[0].as_py())
