"""Information statistics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clinfo_ray.clusters.statistics import (
    UNLABELLED,
    cluster_statistics,
    conditional_entropy_bits,
    entropy_bits,
    joint_entropy_bits,
    mutual_information_bits,
)


def h(*p: float) -> float:
    return -sum(q * math.log2(q) for q in p if q > 0)


def test_entropy_of_uniform_and_skewed_distributions() -> None:
    assert entropy_bits(np.array([0, 1, 2, 3])) == pytest.approx(2.0)
    assert entropy_bits(np.array([7, 7, 7, 7])) == 0.0
    assert entropy_bits(np.array([5, 5, 5, 9])) == pytest.approx(h(0.75, 0.25))  # 0.8113
    assert entropy_bits(np.array(["a", "b", "b", "c"])) == pytest.approx(1.5)


def test_mutual_information_and_conditional_entropy_by_hand() -> None:
    z = np.array([0, 0, 0, 1])
    t = np.array([0, 0, 1, 1])
    # joint: (0,0) x2, (0,1), (1,1) -> H(Z,T) = 1.5
    assert joint_entropy_bits(z, t) == pytest.approx(1.5)
    assert mutual_information_bits(z, t) == pytest.approx(h(0.75, 0.25) + 1.0 - 1.5)
    assert conditional_entropy_bits(z, t) == pytest.approx(0.5)


def test_clusters_refining_labels_carry_all_label_information() -> None:
    z = np.array([0, 1, 2, 3, 4, 5])
    t = np.array([0, 0, 1, 1, 2, 2])
    assert mutual_information_bits(z, t) == pytest.approx(math.log2(3))
    assert conditional_entropy_bits(z, t) == pytest.approx(1.0)  # log2 6 - log2 3


def test_independent_clusters_carry_none() -> None:
    z = np.array([0, 1, 0, 1])
    t = np.array([0, 0, 1, 1])
    assert mutual_information_bits(z, t) == pytest.approx(0.0, abs=1e-12)
    assert conditional_entropy_bits(z, t) == pytest.approx(1.0)


def test_cluster_statistics_record_leaves_unlabelled_rows_out_of_label_terms() -> None:
    clusters = np.array([0, 0, 0, 1, 2, 2])
    labels = np.array([0, 0, 1, 1, UNLABELLED, UNLABELLED])
    record = cluster_statistics(clusters, labels)
    assert record["num_clusters"] == 3
    assert record["cluster_size"] == {"min": 1, "median": 2.0, "max": 3}
    assert record["singleton_clusters"] == 1  # cluster 1
    assert record["cluster_entropy_bits"] == pytest.approx(h(0.5, 1 / 6, 1 / 3))
    # labelled rows only: z = [0,0,0,1], t = [0,0,1,1]
    assert record["num_labelled_rows"] == 4
    assert record["label_entropy_bits"] == pytest.approx(1.0)
    assert record["mutual_information_bits"] == pytest.approx(h(0.75, 0.25) - 0.5)
    assert record["conditional_entropy_bits"] == pytest.approx(0.5)


def test_cluster_statistics_without_labels() -> None:
    record = cluster_statistics(np.array([3, 3, 8]), None)
    assert record["num_clusters"] == 2
    assert record["mutual_information_bits"] is None
    with pytest.raises(ValueError, match="shape"):
        cluster_statistics(np.array([0, 1]), np.array([0, 1, 2]))
