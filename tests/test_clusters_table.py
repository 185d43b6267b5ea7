"""Assignment tables: round trip, and validation errors that name how many and an example."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clinfo_ray.clusters.table import (
    ClusterTableError,
    clusters_for,
    contiguous,
    read_table,
    validate_table,
    write_table,
)
from clinfo_ray.data import columns as C

DATASET_IDS = pa.chunked_array([["a", "b", "c", "d", "e"]])


def table(ids: list, clusters: list, cluster_type: pa.DataType | None = None) -> pa.Table:
    cluster_type = cluster_type or pa.int64()
    return pa.table({C.ID: pa.array(ids, pa.string()), C.CLUSTER: pa.array(clusters, cluster_type)})


def test_write_read_round_trip(tmp_path: Path) -> None:
    path = write_table(tmp_path / "sub" / "t.parquet", DATASET_IDS, np.array([1, 0, 1, 2, 0]))
    stored = read_table(path)
    assert stored.schema.equals(C.CLUSTER_SCHEMA)
    assert stored[C.CLUSTER].to_pylist() == [1, 0, 1, 2, 0]
    assert not list(Path(path).parent.glob(".*"))  # the temporary file was renamed away
    valid = validate_table(stored, DATASET_IDS)
    np.testing.assert_array_equal(clusters_for(valid, pa.array(["e", "a", "d"])), [0, 1, 2])


def test_contiguous_relabels_in_sorted_order() -> None:
    np.testing.assert_array_equal(contiguous(np.array([30, 10, 30, -4])), [2, 1, 2, 0])


@pytest.mark.parametrize(
    ("ids", "clusters", "message"),
    [
        (["a", "b", "c"], [0, 1, 0], "2 ids of the dataset are missing from the table, e.g. 'd'"),
        (
            ["a", "b", "c", "d", "e", "x", "y"],
            [0] * 7,
            "2 ids are not in the dataset, e.g. 'x'",
        ),
        (["a", "b", "c", "d", "e", "a", "b"], [0] * 7, "2 ids appear more than once, e.g. 'a'"),
        (["a", "b", "c", "d", "e"], [0, 1, 3, 3, 4], "1 of 0..4 are unused, e.g. 2"),
        (["a", "b", "c", "d", "e"], [0, 1, -1, 1, 0], "1 rows have a negative cluster"),
        (["a", "b", "c", "d", "e"], [0, 1, None, 1, None], "2 rows have a non-integer cluster"),
    ],
)
def test_validation_names_count_and_example(ids: list, clusters: list, message: str) -> None:
    with pytest.raises(ClusterTableError, match=message.replace(".", r"\.")):
        validate_table(table(ids, clusters), DATASET_IDS)


def test_float_clusters_are_accepted_only_when_whole() -> None:
    whole = validate_table(
        table(list("abcde"), [0.0, 1.0, 1.0, 0.0, 2.0], pa.float64()), DATASET_IDS
    )
    assert whole.schema.field(C.CLUSTER).type == pa.int64()
    bad = table(list("abcde"), [0.0, 1.5, float("nan"), 0.0, 1.0], pa.float64())
    with pytest.raises(
        ClusterTableError, match=r"2 rows have a non-integer cluster .* 'b' has 1\.5"
    ):
        validate_table(bad, DATASET_IDS)
    strings = table(list("abcde"), ["0", "1", "1", "0", "2"], pa.string())
    with pytest.raises(ClusterTableError, match="5 rows have a non-integer cluster"):
        validate_table(strings, DATASET_IDS)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ClusterTableError) as info:
        validate_table(table(["a", "a", "z"], [0, 0, 2]), DATASET_IDS)
    text = str(info.value)
    for part in ("not in the dataset", "missing from the table", "more than once", "unused"):
        assert part in text


def test_read_table_needs_both_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({C.ID: ["a"], "group": [0]}), tmp_path / "t.parquet")
    with pytest.raises(ClusterTableError, match="'cluster' is missing"):
        read_table(tmp_path / "t.parquet")
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "absent.parquet")
