"""Label clusters split or merged at random (clusters.from_labels): I(Z;T) and H(Z|T) against
their closed forms and provable bounds, the seed, the singletons, the config keys, and one
table built through `build_clusters` on a tiny dataset."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from clinfo_ray.clusters.build import build_clusters
from clinfo_ray.clusters.from_labels import label_clusters
from clinfo_ray.clusters.statistics import (
    UNLABELLED,
    cluster_statistics,
    conditional_entropy_bits,
    entropy_bits,
    mutual_information_bits,
)
from clinfo_ray.config import ClustersConfig, ConfigError, TrainConfig
from clinfo_ray.data import columns as C
from clinfo_ray.tuning.trial import cluster_table_key
from tests.datasets import write_metadata_dataset

LABELS, PER_LABEL, TEST_PER_LABEL = 12, 16, 5


def balanced() -> tuple[np.ndarray, np.ndarray]:
    """12 labels x 16 train rows, then 5 test rows of each label, rows shuffled."""
    train = np.repeat(np.arange(LABELS), PER_LABEL)
    test = np.repeat(np.arange(LABELS), TEST_PER_LABEL)
    codes = np.concatenate([train, test])
    is_train = np.arange(codes.size) < train.size
    order = np.random.default_rng(7).permutation(codes.size)
    return codes[order], is_train[order]


def unequal() -> tuple[np.ndarray, np.ndarray]:
    """12 labels with 3..40 train rows each (one label with fewer rows than some m), no test."""
    counts = np.random.default_rng(3).integers(3, 41, size=LABELS)
    codes = np.repeat(np.arange(LABELS), counts)
    return codes[np.random.default_rng(4).permutation(codes.size)], np.ones(codes.size, bool)


def stats(z: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """H(T), I(Z;T), H(Z|T) in bits."""
    return entropy_bits(t), mutual_information_bits(z, t), conditional_entropy_bits(z, t)


def partition(z: np.ndarray) -> set[frozenset[int]]:
    """The clustering as a set of row sets (independent of the cluster numbering)."""
    return {frozenset(np.flatnonzero(z == c).tolist()) for c in np.unique(z)}


@pytest.mark.parametrize("m", [2, 4, 16])
def test_split_of_balanced_labels_gives_log2_m_and_keeps_every_bit_of_the_label(m: int) -> None:
    codes, train = balanced()
    z, details = label_clusters(codes, train, split=m, seed=0)
    h_t, mi, h_z_t = stats(z[train], codes[train])
    assert h_t == pytest.approx(math.log2(LABELS), abs=1e-9)
    assert mi == pytest.approx(h_t, abs=1e-9)
    assert h_z_t == pytest.approx(math.log2(m), abs=1e-9)
    # every part of a label's train rows is exactly 16 / m rows, and holds that label only
    for label in range(LABELS):
        sizes = np.unique(z[train & (codes == label)], return_counts=True)[1]
        assert sizes.tolist() == [PER_LABEL // m] * m
    assert np.unique(z[train]).size == LABELS * m
    assert details == {"split": m, "merge": 0, "draw_seed": 0}


def test_split_deals_each_labels_test_rows_too() -> None:
    codes, train = balanced()
    z, _ = label_clusters(codes, train, split=4, seed=0)
    for label in range(LABELS):
        sizes = np.unique(z[~train & (codes == label)], return_counts=True)[1]
        assert sorted(sizes.tolist()) == [1, 1, 1, 2]  # 5 rows dealt into 4 parts
        assert set(z[~train & (codes == label)]) <= set(z[train & (codes == label)])


@pytest.mark.parametrize("k", [3, 4])
def test_merge_of_balanced_labels_gives_log2_k_and_nothing_else(k: int) -> None:
    codes, train = balanced()
    z, details = label_clusters(codes, train, merge=k, seed=0)
    _, mi, h_z_t = stats(z[train], codes[train])
    assert h_z_t == pytest.approx(0.0, abs=1e-9)
    assert mi == pytest.approx(math.log2(k), abs=1e-9)
    assert entropy_bits(z[train]) == pytest.approx(mi, abs=1e-9)
    assert np.unique(z).size == k
    for label in range(LABELS):  # a label is never cut: all its rows (test too) in one group
        assert np.unique(z[codes == label]).size == 1
    assert details == {"split": 1, "merge": k, "draw_seed": 0, "groups": k}


@pytest.mark.parametrize("m", [2, 4, 7])
def test_split_of_unequal_labels_stays_within_its_bounds(m: int) -> None:
    codes, train = unequal()
    z, _ = label_clusters(codes, train, split=m, seed=5)
    h_t, mi, h_z_t = stats(z, codes)
    assert mi == pytest.approx(h_t, abs=1e-9)  # Z refines T whatever the counts
    counts = np.bincount(codes)
    p = counts / counts.sum()
    # H(Z|T=l) >= its min-entropy: the largest part holds ceil(n_l / m) of the n_l rows
    lower = float((p * np.log2(counts / np.ceil(counts / m))).sum())
    assert lower - 1e-9 <= h_z_t <= math.log2(m) + 1e-9
    assert h_z_t < math.log2(m)  # some count here is not a multiple of m
    for label, n in enumerate(counts):  # parts of ceil or floor size: dealt round robin
        sizes = np.unique(z[codes == label], return_counts=True)[1]
        assert set(sizes.tolist()) <= {n // m, -(-n // m)} and sizes.size == min(m, n)


@pytest.mark.parametrize("k", [3, 5])
def test_merge_of_unequal_labels_stays_within_its_bounds(k: int) -> None:
    codes, train = unequal()
    z, details = label_clusters(codes, train, merge=k, seed=5)
    h_t, mi, h_z_t = stats(z, codes)
    assert h_z_t == pytest.approx(0.0, abs=1e-9)
    p = np.sort(np.bincount(codes) / codes.size)[::-1]
    # a group holds at most ceil(L / K) labels: at most the mass of the ceil(L / K) largest
    lower = -math.log2(p[: -(-LABELS // k)].sum())
    assert lower - 1e-9 <= mi <= min(math.log2(k), h_t) + 1e-9
    assert details["groups"] == k


def test_the_seed_decides_the_draw() -> None:
    codes, train = balanced()
    for keys in ({"split": 4}, {"merge": 3}):
        first, _ = label_clusters(codes, train, seed=11, **keys)
        again, _ = label_clusters(codes, train, seed=11, **keys)
        other, _ = label_clusters(codes, train, seed=12, **keys)
        assert np.array_equal(first, again)
        assert partition(first) != partition(other)


def test_train_clusters_do_not_depend_on_the_other_rows() -> None:
    codes, train = balanced()
    for keys in ({"split": 4}, {"merge": 5}):
        whole, _ = label_clusters(codes, train, seed=3, **keys)
        alone, _ = label_clusters(codes[train], train[train], seed=3, **keys)
        assert partition(whole[train]) == partition(alone)


@pytest.mark.parametrize("keys", [{}, {"split": 4}, {"merge": 3}])
def test_unlabelled_rows_are_singletons(keys: dict) -> None:
    codes, train = balanced()
    codes = codes.copy()
    codes[:6] = UNLABELLED
    z, _ = label_clusters(codes, train, seed=0, **keys)
    sizes = dict(zip(*np.unique(z, return_counts=True), strict=True))
    assert all(sizes[c] == 1 for c in z[:6])
    assert np.array_equal(np.unique(z), np.arange(np.unique(z).size))  # contiguous 0..K-1


def test_plain_labels_are_one_cluster_per_label() -> None:
    codes, train = balanced()
    z, details = label_clusters(codes, train)
    assert partition(z) == partition(codes)
    assert details == {"split": 1, "merge": 0, "draw_seed": None}


def test_fewer_train_labels_than_groups_fill_fewer_groups() -> None:
    codes = np.array([0, 0, 1, 1, 2, 3])
    train = np.array([True, True, True, True, False, False])  # labels 2, 3: test only
    z, details = label_clusters(codes, train, merge=4, seed=0)
    assert details["groups"] == 2
    assert z[0] == z[1] and z[2] == z[3] and z[0] != z[2]


# the config keys


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"label_split": 0}, "clusters.label_split"),
        ({"label_merge": 1}, "clusters.label_merge"),
        ({"label_merge": -2}, "clusters.label_merge"),
        ({"label_split": 2, "label_merge": 3}, "clusters.label_merge"),
        ({"method": "tags", "label_split": 2}, "clusters.label_split"),
        ({"method": "tags-kmeans", "label_merge": 3}, "clusters.label_merge"),
        ({"method": "instance", "label_draw_seed": 1}, "clusters.label_draw_seed"),
        ({"label_split": True}, "clusters.label_split"),
    ],
)
def test_bad_label_keys_name_the_key(fields: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as err:
        ClustersConfig(**fields)
    assert err.value.key == key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"clusters": {"label_split": 2}}, "clusters.label_split"),  # clinfonce: tags-kmeans
        ({"loss": {"method": "simclr"}, "clusters": {"label_merge": 3}}, "clusters.label_merge"),
        (
            {"loss": {"method": "pcl"}, "clusters": {"label_draw_seed": 3}},
            "clusters.label_draw_seed",
        ),
        ({"loss": {"method": "supcon"}, "clusters": {"label_split": 2}}, "clusters.label_split"),
        (
            {"loss": {"method": "supcon"}, "clusters": {"method": "labels", "label_merge": 2}},
            "clusters.label_merge",
        ),
    ],
)
def test_label_keys_on_a_run_without_the_labels_table_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as err:
        TrainConfig.from_dict(raw)
    assert err.value.key == key


@pytest.mark.parametrize("loss", ["clinfonce", "ce-clusters"])
def test_split_and_merged_labels_train_with_clinfonce_and_ce_clusters(loss: str) -> None:
    for keys in ({"label_split": 4}, {"label_merge": 3}):
        raw = {
            "loss": {"method": loss},
            "clusters": {"method": "labels", **keys},
            "run": {"seed": 5},
        }
        cfg = TrainConfig.from_dict(raw)
        assert cfg.cluster_method == "labels"
        assert cfg.run_clusters.label_draw_seed == 5  # run.seed, resolved when used
        pinned = TrainConfig.from_dict(
            {**raw, "clusters": {**raw["clusters"], "label_draw_seed": 9}}
        )
        assert pinned.run_clusters.label_draw_seed == 9
    supcon = TrainConfig.from_dict({"loss": {"method": "supcon"}})
    assert supcon.run_clusters.method == "labels" and supcon.run_clusters.label_draw_seed is None


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """12 train rows: label 0..5 twice each; coarse label = label // 3; 2 test rows; 1 row
    without a label."""
    labels = [i % 6 for i in range(12)] + [0, 1, None]
    rows = {
        C.ID: [f"r{i:02d}" for i in range(15)],
        C.LABEL: labels,
        C.COARSE_LABEL: [None if v is None else v // 3 for v in labels],
        C.TAGS: [[] for _ in range(15)],
        C.HIERARCHY: [None] * 15,
        C.SPLIT: [C.TRAIN] * 12 + [C.TEST] * 2 + [C.TRAIN],
    }
    return write_metadata_dataset(tmp_path / "data", rows)


def test_build_clusters_writes_split_labels_and_records_the_draw(data: Path) -> None:
    config = ClustersConfig(method="labels", label_split=2, label_draw_seed=4)
    record = build_clusters(config, data, data.parent / "split.parquet")
    # 12 labelled train rows: 6 labels x 2 rows, each cut in two; the unlabelled row alone
    assert record["num_clusters"] == 13 and record["singleton_clusters"] == 13
    assert record["mutual_information_bits"] == pytest.approx(math.log2(6), abs=1e-9)
    assert record["conditional_entropy_bits"] == pytest.approx(1.0, abs=1e-9)
    assert record["details"] == {
        "column": C.LABEL,
        "split": 2,
        "merge": 0,
        "draw_seed": 4,
        "singleton_rows": 1,
    }
    assert record["config"]["label_split"] == 2 and record["label_column"] == C.LABEL
    merged = build_clusters(
        ClustersConfig(method="labels", label_merge=3), data, data.parent / "merged.parquet"
    )
    assert merged["details"]["groups"] == 3 and merged["details"]["draw_seed"] == 0
    assert merged["mutual_information_bits"] == pytest.approx(math.log2(3), abs=1e-9)
    assert merged["conditional_entropy_bits"] == pytest.approx(0.0, abs=1e-9)


def test_the_shared_table_key_tells_the_label_draws_apart(data: Path) -> None:
    def key(clusters: dict, seed: int = 0) -> str:
        base = {"data": {"dataset_dir": str(data)}, "run": {"seed": seed}}
        # the k-means seed pinned: only the label draw's seed follows run.seed
        fields = {"method": "labels", "kmeans": {"seed": 0}, **clusters}
        return cluster_table_key(TrainConfig.from_dict({**base, "clusters": fields}))

    keys = [
        key({}),
        key({"label_split": 2}),
        key({"label_split": 4}),
        key({"label_merge": 2}),
        key({"label_merge": 3}),
        key({"label_merge": 3}, seed=1),  # the draw's seed from run.seed
        key({"label_merge": 3, "label_draw_seed": 7}),
    ]
    assert len(set(keys)) == len(keys)
    assert key({"label_merge": 3, "label_draw_seed": 1}) == key({"label_merge": 3}, seed=1)
    assert key({}, seed=1) == key({})  # nothing drawn: run.seed does not enter


def test_cluster_statistics_of_a_merge_match_the_closed_form() -> None:
    codes, train = balanced()
    z, _ = label_clusters(codes, train, merge=4, seed=1)
    record = cluster_statistics(z[train], codes[train])
    assert record["num_clusters"] == 4
    assert record["cluster_entropy_bits"] == pytest.approx(2.0, abs=1e-9)
    assert record["label_entropy_bits"] - record["mutual_information_bits"] == pytest.approx(
        math.log2(LABELS) - 2.0, abs=1e-9
    )
