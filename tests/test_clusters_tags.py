"""Tag clusters: the paper's top-k combinations, tag ranking, TF-IDF and tags-kmeans."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pytest

from clinfo_ray.clusters.from_tags import (
    rank_tags,
    tag_presence,
    tags_kmeans_clusters,
    tfidf_vectors,
    top_k_tag_clusters,
)
from clinfo_ray.config import ClustersConfig, KMeansSettings


def tags_kmeans(k: int, nredo: int = 1, **config) -> ClustersConfig:
    """A tags-kmeans config with k clusters, faiss on the CPU, seed 0."""
    kmeans = KMeansSettings(nredo=nredo, seed=0, device="cpu")
    return ClustersConfig(method="tags-kmeans", k=k, kmeans=kmeans, **config)


def tags_array(rows: list[list[str]]) -> pa.Array:
    return pa.array(rows, type=pa.list_(pa.string()))


def all_train(n: int) -> np.ndarray:
    return np.ones(n, dtype=bool)


def test_presence_is_sparse_deduplicated_and_vocabulary_from_train() -> None:
    rows = [["cat", " cat", "dog"], [], ["", "fish"], ["owl"]]
    train = np.array([True, True, True, False])
    presence = tag_presence(tags_array(rows), train)
    assert presence.vocabulary == ["cat", "dog", "fish"]  # "owl" only in test, "" dropped
    np.testing.assert_array_equal(presence.rows, [0, 0, 2])
    np.testing.assert_array_equal(presence.cols, [0, 1, 2])
    np.testing.assert_array_equal(presence.train_frequency, [1, 1, 1])
    np.testing.assert_array_equal(presence.has_tags, [True, False, True, False])


def test_top_k_gives_exactly_the_distinct_combinations() -> None:
    # every combination of three tags, each twice; "rare" is on one row only
    combos = [c for c in itertools.product([0, 1], repeat=3)] * 2
    names = ["red", "round", "small"]
    rows = [[n for n, bit in zip(names, c, strict=True) if bit] for c in combos]
    rows[0] = [*rows[0], "rare"]
    presence = tag_presence(tags_array(rows), all_train(len(rows)))
    clusters, chosen = top_k_tag_clusters(presence, 3)
    assert sorted(chosen) == names  # each at p = 1/2: 1 bit; "rare" has less
    assert clusters.dtype == np.int64
    assert sorted(np.unique(clusters)) == list(range(8))
    for a, b in itertools.combinations(range(len(rows)), 2):
        assert (clusters[a] == clusters[b]) == (combos[a] == combos[b])
    # k = 2: four combinations, rows that agree on the two kept tags share a cluster
    clusters2, chosen2 = top_k_tag_clusters(presence, 2)
    assert len(np.unique(clusters2)) == 4
    kept = [names.index(t) for t in chosen2]
    keys = [tuple(c[i] for i in kept) for c in combos]
    for a, b in itertools.combinations(range(len(rows)), 2):
        assert (clusters2[a] == clusters2[b]) == (keys[a] == keys[b])


def test_only_combinations_that_occur_become_clusters() -> None:
    rows = [["a", "b"], ["a", "b"], ["c"], []]
    clusters, _ = top_k_tag_clusters(tag_presence(tags_array(rows), all_train(4)), 3)
    # ranks a, b (p = 1/2), c (p = 1/4) -> bits 0, 1, 2; codes 0b011, 0b011, 0b100, 0
    # (the untagged row is the all-zero attribute row: the paper's construction)
    np.testing.assert_array_equal(clusters, [1, 1, 2, 0])


def test_tags_kmeans_makes_every_untagged_row_a_singleton() -> None:
    rows = [["x", "y"]] * 3 + [["z"]] * 3 + [[], [], ["test-only"], []]
    train = np.array([True] * 8 + [False, False])
    clusters = tags_kmeans_clusters(tag_presence(tags_array(rows), train), tags_kmeans(2))
    assert len(set(clusters[:3])) == 1 and len(set(clusters[3:6])) == 1
    assert clusters[0] != clusters[3]
    # rows 6, 7 (untagged, train), 8 (only a tag the train split never saw), 9 (test): alone
    alone = clusters[6:].tolist()
    assert len(set(alone)) == 4 and not set(alone) & {clusters[0], clusters[3]}
    assert sorted(np.unique(clusters)) == list(range(6))


def test_entropy_and_frequency_rank_differently() -> None:
    # "common" on 9 of 10 rows (H = 0.469 bit), "half" on 5 (H = 1 bit), "few" on 2 (0.722 bit)
    rows = [["common"] for _ in range(10)]
    for i in range(5):
        rows[i].append("half")
    rows[5].append("few")
    rows[6].append("few")
    rows[9] = []  # drop "common" from the last row
    presence = tag_presence(tags_array(rows), all_train(10))
    names = presence.vocabulary
    assert [names[i] for i in rank_tags(presence, "entropy")] == ["half", "few", "common"]
    assert [names[i] for i in rank_tags(presence, "frequency")] == ["common", "half", "few"]
    assert top_k_tag_clusters(presence, 1, "frequency")[1] == ["common"]


def test_include_and_exclude_steer_the_vocabulary() -> None:
    rows = [["a", "b", "c"], ["a"], ["b", "d"]]
    train = all_train(3)
    assert tag_presence(tags_array(rows), train, include=["a", "d", "zz"]).vocabulary == ["a", "d"]
    assert tag_presence(tags_array(rows), train, exclude=["a", "b"]).vocabulary == ["c", "d"]


def test_top_k_larger_than_the_vocabulary_names_both_numbers() -> None:
    presence = tag_presence(tags_array([["a", "b"], ["c"]]), all_train(2))
    with pytest.raises(ValueError, match=r"--top-k 7 is larger .* has 3 distinct tags"):
        top_k_tag_clusters(presence, 7)


def test_tfidf_by_hand() -> None:
    rows = [["a", "b"], ["a"], ["c"], ["a", "zz"]]
    train = np.array([True, True, True, False])  # "zz" is test-only: not in the vocabulary
    x = tfidf_vectors(tag_presence(tags_array(rows), train))
    idf_a, idf_b = math.log(4 / 3) + 1, math.log(4 / 2) + 1  # ln((1 + N) / (1 + df)) + 1
    norm = math.hypot(idf_a, idf_b)
    np.testing.assert_allclose(x[0], [idf_a / norm, idf_b / norm, 0.0], rtol=1e-6)
    np.testing.assert_allclose(x[1], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(x[3], [1.0, 0.0, 0.0])


def test_random_projection_keeps_cosines_approximately() -> None:
    rng = np.random.default_rng(0)
    rows = [
        list(rng.choice([f"t{i}" for i in range(300)], size=12, replace=False)) for _ in range(60)
    ]
    presence = tag_presence(tags_array(rows), all_train(60))
    dense = tfidf_vectors(presence)
    projected = tfidf_vectors(presence, max_dense_bytes=1, projection_dim=2048)
    assert projected.shape == (60, 2048)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, rtol=1e-4)
    error = np.abs(projected @ projected.T - dense @ dense.T).max()
    assert error < 0.12


@pytest.mark.parametrize("projected", [False, True])
def test_tags_kmeans_recovers_planted_tag_groups(projected: bool) -> None:
    """Dense TF-IDF, or (clusters.tfidf_max_dense_bytes exceeded) its random projection."""
    rng = np.random.default_rng(1)
    groups = [[f"g{g}_{i}" for i in range(8)] for g in range(5)]
    truth = np.repeat(np.arange(5), 30)
    rows = [list(rng.choice(groups[g], size=4, replace=False)) for g in truth]
    rows += [[], []]  # untagged rows: a singleton each
    train = np.ones(len(rows), dtype=bool)
    train[::7] = False  # test rows are assigned to the nearest train centroid
    presence = tag_presence(tags_array(rows), train)
    tfidf = {"tfidf_max_dense_bytes": 1, "tfidf_projection_dim": 64} if projected else {}
    clusters = tags_kmeans_clusters(presence, tags_kmeans(5, nredo=2, **tfidf))
    assert sorted(np.unique(clusters)) == list(range(7))
    assert clusters[-1] != clusters[-2] and not {clusters[-1], clusters[-2]} & set(clusters[:-2])
    pairs = np.unique(np.stack([clusters[:-2], truth], axis=1), axis=0)
    assert len(pairs) == 5  # one cluster per planted group


def test_tags_kmeans_needs_enough_tagged_train_rows() -> None:
    presence = tag_presence(tags_array([["a"], ["b"], []]), all_train(3))
    with pytest.raises(ValueError, match="--k 3 is larger than the number of tagged train rows, 2"):
        tags_kmeans_clusters(presence, tags_kmeans(3))
