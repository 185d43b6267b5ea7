"""Hierarchy clusters: a row's first L ancestors, coarse to fine; shorter rows are singletons."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from clinfo_ray.clusters.build import assign_clusters, metadata_columns
from clinfo_ray.clusters.from_hierarchy import hierarchy_clusters
from clinfo_ray.config import ClustersConfig
from clinfo_ray.data import columns as C

# A three-level tree (as WordNet ancestors): animal > bird > {owl, hen}, animal > fish > eel,
# plant > tree > oak; one row stops at "animal", one has no hierarchy, one is null.
ROWS: list[list[str] | None] = [
    ["animal", "bird", "owl"],
    ["animal", "bird", "owl"],
    ["animal", "bird", "hen"],
    ["animal", "fish", "eel"],
    ["plant", "tree", "oak"],
    ["animal"],
    [],
    None,
    ["plant", "tree", "oak"],
]


def hierarchy(rows: list[list[str] | None]) -> pa.ChunkedArray:
    return pa.chunked_array([rows[:4], rows[4:]], type=pa.list_(pa.string()))


def same_partition(clusters: np.ndarray, keys: list[object]) -> bool:
    """Two rows share a cluster exactly when their keys are equal (None: never)."""
    return all(
        (clusters[a] == clusters[b]) == (keys[a] is not None and keys[a] == keys[b])
        for a, b in itertools.combinations(range(len(keys)), 2)
    )


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_each_level_groups_by_the_first_level_ancestors(level: int) -> None:
    clusters, alone = hierarchy_clusters(hierarchy(ROWS), level)
    keys = [tuple(r[:level]) if r is not None and len(r) >= level else None for r in ROWS]
    assert clusters.dtype == np.int64
    assert sorted(np.unique(clusters)) == list(range(len(set(keys) - {None}) + keys.count(None)))
    assert same_partition(clusters, keys)
    assert alone == keys.count(None)


def test_levels_by_hand() -> None:
    one, alone1 = hierarchy_clusters(hierarchy(ROWS), 1)
    # level 1: animal x5 (with the "animal"-only row), plant x2; [] and None alone
    assert one[0] == one[3] == one[5] and one[4] == one[8] and one[0] != one[4]
    assert alone1 == 2
    two, alone2 = hierarchy_clusters(hierarchy(ROWS), 2)
    assert two[0] == two[2] != two[3] and two[5] not in np.delete(two, 5)
    assert alone2 == 3
    three, _ = hierarchy_clusters(hierarchy(ROWS), 3)
    assert three[0] == three[1] != three[2]
    four, alone4 = hierarchy_clusters(hierarchy(ROWS), 4)  # deeper than any row: all singletons
    assert sorted(four) == list(range(len(ROWS))) and alone4 == len(ROWS)


def test_names_compare_whole_not_joined() -> None:
    """["a>b", "c"] and ["a", "b>c"] would collide if the levels were joined into one string."""
    clusters, _ = hierarchy_clusters(pa.array([["a>b", "c"], ["a", "b>c"], ["a>b", "c"]]), 2)
    assert clusters[0] == clusters[2] != clusters[1]


def test_empty_or_null_ancestors_make_a_singleton() -> None:
    rows = [["a", "x"], ["a", ""], ["a", None], ["a", ""], ["a", "x"]]
    clusters, alone = hierarchy_clusters(pa.array(rows, type=pa.list_(pa.string())), 2)
    assert clusters[0] == clusters[4] and alone == 3
    assert len(set(clusters[1:4].tolist())) == 3 and clusters[0] not in clusters[1:4]
    level1, alone1 = hierarchy_clusters(pa.array(rows, type=pa.list_(pa.string())), 1)
    assert len(set(level1.tolist())) == 1 and alone1 == 0  # the bad names are below level 1


def test_no_row_deep_enough_and_bad_level() -> None:
    clusters, alone = hierarchy_clusters(pa.array([[], ["a"]], type=pa.list_(pa.string())), 2)
    assert sorted(clusters) == [0, 1] and alone == 2
    with pytest.raises(ValueError, match="level must be >= 1"):
        hierarchy_clusters(pa.array([["a"]]), 0)


def test_assign_clusters_reads_the_hierarchy_column_at_the_configured_level() -> None:
    config = ClustersConfig(method="hierarchy", hierarchy_level=2)
    assert C.HIERARCHY in metadata_columns(config)
    metadata = pa.table(
        {
            C.ID: [f"r{i}" for i in range(len(ROWS))],
            C.LABEL: [0] * len(ROWS),
            C.SPLIT: [C.TRAIN] * len(ROWS),
            C.HIERARCHY: hierarchy(ROWS),
        }
    )
    clusters, details = assign_clusters(config, metadata)
    np.testing.assert_array_equal(clusters, hierarchy_clusters(hierarchy(ROWS), 2)[0])
    assert details == {"column": C.HIERARCHY, "level": 2, "singleton_rows": 3}
