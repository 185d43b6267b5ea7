"""Cluster tables built from a config on a tiny dataset written in the format of the data issue,
and `clinfo-ray clusters` / jobs/clusters.py end to end."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clinfo_ray.clusters.build import build_clusters, statistics_of_table, stats_path
from clinfo_ray.clusters.table import ClusterTableError
from clinfo_ray.config import ClustersConfig, ConfigError, KMeansSettings
from clinfo_ray.data import columns as C
from tests.datasets import write_metadata_dataset

REPO = Path(__file__).resolve().parents[1]
# Six train rows, two test rows. Labels on train: 0 0 1 1 2 2 -> H(T) = log2 3.
ROWS = {
    C.ID: [f"r{i}" for i in range(8)],
    C.LABEL: [0, 0, 1, 1, 2, 2, 0, None],
    C.COARSE_LABEL: [0, 0, 0, 0, 1, 1, 0, 0],
    # level 1 = the coarse label on train; level 2 = the label; r7 has only one level
    C.HIERARCHY: [["A", "a"]] * 2 + [["A", "b"]] * 2 + [["B", "c"]] * 2 + [["A", "a"], ["A"]],
    # "x" on 3 of 6 train rows (1 bit), "y" on 2 (0.918 bit), "z" on 1
    C.TAGS: [["x", "y"], ["x", "y"], ["x"], ["z"], [], ["w"], ["x", "q"], []],
    C.SPLIT: [C.TRAIN] * 6 + [C.TEST] * 2,
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_metadata_dataset(tmp_path / "data", ROWS)


def run_cli(*argv: str) -> int:
    from clinfo_ray.commands import clusters as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def h(*p: float) -> float:
    return -sum(q * math.log2(q) for q in p if q > 0)


def table_of(path: Path) -> dict[str, int]:
    return dict(zip(*pq.read_table(path).to_pydict().values(), strict=True))


LOG3 = math.log2(3)
# method, config fields, expected (H(Z), I(Z;T), H(Z|T), clusters on train) computed by hand
EXPECTED = {
    "labels": ({}, (LOG3, LOG3, 0.0, 3)),
    "instance": ({}, (math.log2(6), LOG3, 1.0, 6)),
    "hierarchy": ({}, (h(2 / 3, 1 / 3), h(2 / 3, 1 / 3), 0.0, 2)),
    # top-1 tag "x": Z = 1 1 1 0 0 0; joint (1,0)x2 (1,1) (0,1) (0,2)x2
    "tags": (
        {"top_k": 1},
        (1.0, 1.0 + LOG3 - h(1 / 3, 1 / 6, 1 / 6, 1 / 3), h(1 / 3, 1 / 6, 1 / 6, 1 / 3) - LOG3, 2),
    ),
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_methods_write_complete_tables_and_hand_checked_stats(data: Path, method: str) -> None:
    out = data.parent / f"{method}.parquet"
    fields, (h_z, mi, h_z_t, k) = EXPECTED[method]
    config = ClustersConfig(method=method, **fields)
    record = build_clusters(config, data, out)
    table = pq.read_table(out)
    assert table.schema.equals(C.CLUSTER_SCHEMA)
    assert sorted(table[C.ID].to_pylist()) == sorted(ROWS[C.ID])
    clusters = table[C.CLUSTER].to_numpy()
    assert set(clusters) == set(range(clusters.max() + 1))  # contiguous 0..K-1
    stats = json.loads(Path(stats_path(out)).read_text())
    assert stats == json.loads(json.dumps(record))  # the file holds what was returned
    assert stats["num_clusters"] == k
    assert stats["label_entropy_bits"] == pytest.approx(LOG3)
    assert stats["cluster_entropy_bits"] == pytest.approx(h_z)
    assert stats["mutual_information_bits"] == pytest.approx(mi)
    assert stats["conditional_entropy_bits"] == pytest.approx(h_z_t)
    assert set(stats["cluster_size"]) == {"min", "median", "max"}
    # the config, whole and plain, is the record of how the table was made
    assert stats["method"] == method and "options" not in stats
    assert stats["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
    assert stats["config"]["kmeans"]["niter"] == config.kmeans.niter


def test_tags_kmeans_and_stats_only_agree(data: Path) -> None:
    out = data.parent / "tk.parquet"
    config = ClustersConfig(method="tags-kmeans", k=2, kmeans=KMeansSettings(seed=3, device="cpu"))
    stats = build_clusters(config, data, out)
    clusters = table_of(out)
    assert clusters["r0"] == clusters["r1"]  # identical tags
    # the untagged rows r4 (train) and r7 (test) are singletons, not one shared cluster
    assert clusters["r4"] != clusters["r7"]
    assert sum(c == clusters["r4"] for c in clusters.values()) == 1
    assert sum(c == clusters["r7"] for c in clusters.values()) == 1
    assert stats["details"]["untagged_rows"] == stats["details"]["singleton_rows"] == 2
    assert stats["singleton_clusters"] >= 1  # r4 among the train rows
    assert stats["config"]["kmeans"] == {
        "niter": 20,
        "nredo": 1,
        "init": "afk-mc2",
        "seed": 3,
        "device": "cpu",
    }
    again = statistics_of_table(out, data)
    for key in ("num_clusters", "mutual_information_bits", "conditional_entropy_bits"):
        assert again[key] == pytest.approx(stats[key])


def test_tags_details_count_the_all_zero_cluster(data: Path) -> None:
    out = data.parent / "t1.parquet"
    details = build_clusters(ClustersConfig(method="tags", top_k=1), data, out)["details"]
    # without "x": r3 r4 r5 r7 (the paper's all-zero cluster, untagged r4 r7 included)
    assert details["tags"] == ["x"] and details["all_zero_rows"] == 4
    assert details["untagged_rows"] == 2 and details["singleton_rows"] == 0


def test_tag_filters_come_from_the_config(data: Path) -> None:
    out = data.parent / "filtered.parquet"
    # without "x" the best tag is "y" (2 of 6 train rows: 0.918 bit)
    config = ClustersConfig(method="tags", top_k=1, tags_exclude=("x",))
    details = build_clusters(config, data, out)["details"]
    assert details["tags"] == ["y"] and details["tag_vocabulary_size"] == 3  # y z w
    config = ClustersConfig(method="tags", top_k=1, tags_include=("z", "w"))
    details = build_clusters(config, data, out)["details"]
    assert details["tag_vocabulary_size"] == 2 and details["tags"][0] in {"z", "w"}


def test_statistics_reject_a_table_missing_ids(data: Path) -> None:
    table = data.parent / "short.parquet"
    pq.write_table(pa.table({C.ID: ["r0", "r1", "zz"], C.CLUSTER: [0, 1, 1]}), table)
    with pytest.raises(ClusterTableError) as err:
        statistics_of_table(table, data)
    assert "6 ids of the dataset are missing from the table, e.g. 'r2'" in str(err.value)
    assert "1 ids are not in the dataset, e.g. 'zz'" in str(err.value)


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"method": "tags", "top_k": 9}, ValueError, "--top-k 9 is larger than the number of tags"),
        ({"method": "tags", "top_k": 9}, ValueError, "has 4 distinct tags"),  # x y z w; q is test
        ({"method": "kmeans"}, ValueError, "clusters a checkpoint's embeddings"),
        ({}, ValueError, "clusters.method is not set"),
    ],
)
def test_bad_requests_fail_with_a_reason(
    data: Path, fields: dict, error: type[Exception], message: str
) -> None:
    out = data.parent / "bad.parquet"
    with pytest.raises(error) as err:
        build_clusters(ClustersConfig(**fields), data, out)
    assert message in str(err.value)
    assert not out.exists() and not Path(stats_path(out)).exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "hierarchy", "hierarchy_level": 0}, "clusters.hierarchy_level: must be >= 1"),
        ({"method": "tags-kmeans", "k": 1}, "clusters.k"),
        ({"kmeans": {"niter": 0}}, "clusters.kmeans.niter"),
        ({"kmeans": {"init": "kmeans||"}}, "clusters.kmeans.init"),
    ],
)
def test_bad_settings_fail_in_the_config(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClustersConfig(**fields)


def test_hierarchy_level_two_splits_level_one_and_counts_short_rows(data: Path) -> None:
    out = data.parent / "h2.parquet"
    build_clusters(ClustersConfig(method="hierarchy"), data, out)
    one = table_of(out)
    build_clusters(ClustersConfig(method="hierarchy", hierarchy_level=2), data, out)
    two = table_of(out)
    stats = json.loads(Path(stats_path(out)).read_text())
    assert stats["details"] == {"column": C.HIERARCHY, "level": 2, "singleton_rows": 1}
    # on train, level 2 is the label: (H(Z), I(Z;T), H(Z|T)) = (log2 3, log2 3, 0)
    assert stats["num_clusters"] == 3
    assert stats["mutual_information_bits"] == pytest.approx(LOG3)
    assert stats["conditional_entropy_bits"] == pytest.approx(0.0)
    assert one["r7"] == one["r0"] and two["r7"] not in {two[f"r{i}"] for i in range(7)}
    assert one["r2"] == one["r0"] and two["r2"] != two["r0"] and two["r6"] == two["r0"]


def test_a_dataset_of_the_old_format_asks_for_prepare(data: Path) -> None:
    manifest = json.loads((data / C.MANIFEST).read_text())
    (data / C.MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(ValueError, match="run `clinfo-ray prepare` again"):
        build_clusters(ClustersConfig(method="labels"), data, data.parent / "old.parquet")


def test_a_folder_without_manifest_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json"):
        build_clusters(ClustersConfig(method="labels"), tmp_path, tmp_path / "t.parquet")


# `clinfo-ray clusters`: the same builders behind flags, errors as exit status 2 and one line


def test_cli_builds_a_table_and_prints_the_stats_of_one(
    data: Path, capsys: pytest.CaptureFixture
) -> None:
    out = data.parent / "labels.parquet"
    assert run_cli("--data", str(data), "--method", "labels", "--out", str(out)) == 0
    stats = json.loads(Path(stats_path(out)).read_text())
    assert stats["num_clusters"] == 3 and stats["config"]["method"] == "labels"
    capsys.readouterr()
    assert run_cli("--stats-only", str(out), "--data", str(data)) == 0
    printed = json.loads(capsys.readouterr().out)
    for key in ("num_clusters", "mutual_information_bits", "conditional_entropy_bits"):
        assert printed[key] == pytest.approx(stats[key])


def test_cli_stats_only_rejects_a_table_missing_ids(
    data: Path, capsys: pytest.CaptureFixture
) -> None:
    table = data.parent / "short.parquet"
    pq.write_table(pa.table({C.ID: ["r0", "r1", "zz"], C.CLUSTER: [0, 1, 1]}), table)
    assert run_cli("--stats-only", str(table), "--data", str(data)) == 2
    err = capsys.readouterr().err
    assert "6 ids of the dataset are missing from the table, e.g. 'r2'" in err
    assert "1 ids are not in the dataset, e.g. 'zz'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "kmeans", "--checkpoint", "ck"], "no such checkpoint directory: ck"),
        (["--method", "labels", "--data", "nowhere"], "no manifest.json"),
    ],
)
def test_cli_bad_requests_fail_with_a_reason(
    data: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    out = data.parent / "bad.parquet"
    assert run_cli("--data", str(data), "--out", str(out), *argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_job_entrypoint_runs_standalone(data: Path) -> None:
    out = data.parent / "job.parquet"
    cmd = [sys.executable, str(REPO / "jobs" / "clusters.py"), "--data", str(data)]
    done = subprocess.run(
        [*cmd, "--method", "labels", "--out", str(out)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(Path(stats_path(out)).read_text())["num_clusters"] == 3
