"""The search without Ray: space files checked against the typed config (each error naming the
file, line and key), the trials' configs and shared cluster tables, concurrency, and the
outputs (trials.csv, the table, best.yaml, the plot) from made-up trials."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

from clinfo_ray.commands.main import main
from clinfo_ray.config import ConfigError, TrainConfig, apply_overrides, load_config
from clinfo_ray.data import columns as C
from clinfo_ray.tuning.report import (
    COMPLETED,
    ERRORED,
    STOPPED,
    TrialRecord,
    best_config,
    best_record,
    format_table,
    plot,
    write_outputs,
)
from clinfo_ray.tuning.search import (
    SearchSettings,
    check_base,
    claim_search_dir,
    derived_max_concurrent,
)
from clinfo_ray.tuning.space import SPACES_DIR, load_space
from clinfo_ray.tuning.trial import TrialPlan, shared_cluster_table, with_shared_clusters
from tests.datasets import write_metadata_dataset

QUICKSTART = load_config("quickstart")


def _space(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_spaces_load_against_the_quickstart(path: Path) -> None:
    space = load_space(path, QUICKSTART)
    assert space.name == path.stem and len(space.keys) >= 2
    assert set(space.param_space()) == set(space.keys)
    base = space.base_config(QUICKSTART)
    for key, value in space.fixed.items():
        section, _, leaf = key.partition(".")
        assert getattr(getattr(base, section), leaf) == value
    assert load_space(path.stem, QUICKSTART).keys == space.keys  # by name, from tune_spaces/


def test_kmeans_space_also_serves_the_tag_kmeans_with_the_command_line_winning() -> None:
    cli = {"loss.method": "clinfonce", "clusters.method": "tags-kmeans"}
    config = apply_overrides(QUICKSTART, cli)
    space = load_space("kmeans_k", config, cli)  # the space's set says clinfonce-kmeans
    base = space.base_config(config, cli)
    assert (base.loss.method, base.cluster_method) == ("clinfonce", "tags-kmeans")
    assert base.clusters.warmup_epochs == 5  # the rest of the space's set still applies


BAD_SPACES = {
    "unknown key": (
        "search:\n  loss.temprature: {type: grid, values: [0.1]}\n",
        "loss.temprature",
        2,
    ),
    "uniform on an int key": (
        "search:\n  clusters.k: {type: uniform, low: 2, high: 9}\n",
        "clusters.k",
        2,
    ),
    "randint on a float key": (
        "search:\n  optim.lr: {type: randint, low: 1, high: 3}\n",
        "optim.lr",
        2,
    ),
    "a value of the wrong type": (
        "search:\n  loss.temperature: {type: choice, values: [0.1, warm]}\n",
        "loss.temperature",
        2,
    ),
    "a value out of range": (
        "search:\n  loss.temperature: {type: grid, values: [0.1, 0]}\n",
        "loss.temperature",
        2,
    ),
    "an empty list": ("search:\n  optim.lr: {type: grid, values: []}\n", "optim.lr", 2),
    "low >= high": (
        "search:\n  optim.lr: {type: uniform, low: 0.5, high: 0.5}\n",
        "optim.lr",
        2,
    ),
    "randint's largest value out of range": (
        "search:\n  clusters.top_k: {type: randint, low: 4, high: 64}\n",
        "clusters.top_k",
        2,
    ),
    "loguniform from 0": (
        "search:\n  optim.lr: {type: loguniform, low: 0, high: 1}\n",
        "optim.lr",
        2,
    ),
    "an unknown kind": ("search:\n  optim.lr: {type: normal, values: [1]}\n", "optim.lr", 2),
    "an unknown field": (
        "search:\n  optim.lr: {type: uniform, low: 0.1, high: 1, q: 0.1}\n",
        "optim.lr",
        2,
    ),
    "a key the search owns": ("search:\n  run.name: {type: grid, values: [a]}\n", "run.name", 2),
    "the budget": ("search:\n  optim.epochs: {type: grid, values: [5, 9]}\n", "optim.epochs", 2),
    "both fixed and searched": (
        "set:\n  optim.lr: 0.1\nsearch:\n  optim.lr: {type: grid, values: [0.1]}\n",
        "optim.lr",
        4,
    ),
    "a bad fixed value": (
        "set:\n  clusters.method: tagz\nsearch:\n  optim.lr: {type: grid, values: [0.1]}\n",
        "clusters.method",
        2,
    ),
    "an unknown fixed key": (
        "set:\n  optim.lrr: 0.1\nsearch:\n  optim.lr: {type: grid, values: [0.1]}\n",
        "optim.lrr",
        2,
    ),
    "an unknown section": (
        "search:\n  optim.lr: {type: grid, values: [0.1]}\nsamples: 3\n",
        "samples",
        3,
    ),
    "bad num_samples": (
        "search:\n  optim.lr: {type: grid, values: [0.1]}\nnum_samples: 0\n",
        "num_samples",
        3,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_a_bad_space_fails_naming_the_file_line_and_key(tmp_path: Path, case: str) -> None:
    text, key, line = BAD_SPACES[case]
    path = _space(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_space(path, QUICKSTART)
    message = str(info.value)
    assert message.startswith(f"{path} line {line}: "), message
    assert key in message and info.value.key == key
    assert "\n" not in message


def test_a_space_without_search_or_with_bad_yaml_fails_naming_the_file(tmp_path: Path) -> None:
    for text in ("set:\n  optim.lr: 0.1\n", "search: [", "- a\n"):
        path = _space(tmp_path, text)
        with pytest.raises(ConfigError, match=str(path)):
            load_space(path, QUICKSTART)
    with pytest.raises(ConfigError, match="no search space file 'nope'"):
        load_space("nope", QUICKSTART)


def test_a_key_searched_and_given_on_the_command_line_fails(tmp_path: Path) -> None:
    path = _space(tmp_path, "search:\n  optim.lr: {type: grid, values: [0.1, 0.2]}\n")
    with pytest.raises(ConfigError, match=r"optim\.lr: is searched here; drop it"):
        load_space(path, QUICKSTART, {"optim.lr": 0.3})


def test_the_bounds_and_draws_become_tune_domains(tmp_path: Path) -> None:
    text = (
        "search:\n"
        "  clusters.k: {type: randint, low: 4, high: 9}\n"
        "  optim.lr: {type: loguniform, low: 1.0e-3, high: 1}\n"
        "  loss.temperature: {type: uniform, low: 0.05, high: 0.5}\n"
        "  clusters.top_k: {type: choice, values: [2, 4]}\n"
        "  model.backbone: {type: grid, values: [small_cnn, resnet18]}\n"
        "num_samples: 3\n"
    )
    space = load_space(_space(tmp_path, text), QUICKSTART)
    assert space.num_samples == 3 and space.grid_size() == 2 and space.has_grid
    assert space.dimension("clusters.k").probes == (4, 8)  # randint's high is excluded
    domains = space.param_space()
    assert domains["clusters.k"].lower == 4 and domains["clusters.k"].upper == 9
    assert domains["model.backbone"] == {"grid_search": ["small_cnn", "resnet18"]}
    assert domains["clusters.top_k"].categories == [2, 4]


def test_a_trial_config_is_the_base_with_its_values_named_by_its_id(tmp_path: Path) -> None:
    plan = TrialPlan(QUICKSTART.to_dict(), str(tmp_path / "search"))
    cfg = plan.trial_config({"loss.temperature": 0.3}, "abc_00001")
    assert cfg.loss.temperature == 0.3 and cfg.run.name == "abc_00001"
    assert cfg.run.output_dir == str(tmp_path / "search" / "trials")
    assert cfg.eval.knn_every == 1  # the search's metric, every epoch
    assert cfg.optim == QUICKSTART.optim and cfg.model == QUICKSTART.model


def test_trials_share_one_cluster_table_per_clusters_config(tmp_path: Path) -> None:
    rows: dict[str, list] = {f.name: [None] * 12 for f in C.SCHEMA if f.name != C.IMAGE}
    rows[C.ID] = [f"r{i:02d}" for i in range(12)]
    rows[C.TAGS] = [["a", "b"][: 1 + i % 2] for i in range(12)]
    rows[C.LABEL] = [i % 2 for i in range(12)]
    rows[C.SPLIT] = [C.TRAIN] * 10 + [C.TEST] * 2
    data = write_metadata_dataset(tmp_path / "data", rows)
    base = apply_overrides(
        TrainConfig(),
        {"data.dataset_dir": str(data), "clusters.method": "tags", "clusters.top_k": 2},
    )
    cache = tmp_path / "clusters"
    first = shared_cluster_table(base, cache)
    assert first is not None and first.is_file()
    built = first.stat().st_mtime_ns
    # another temperature: the same table, not rebuilt
    again = shared_cluster_table(apply_overrides(base, {"loss.temperature": 0.5}), cache)
    assert again == first and first.stat().st_mtime_ns == built
    other = shared_cluster_table(apply_overrides(base, {"clusters.top_k": 1}), cache)
    assert other is not None and other != first
    assert with_shared_clusters(base, cache).clusters.table_path == str(first)
    # no shared table: instance clusters, iterative k-means, a table of the user's own
    simclr = apply_overrides(base, {"loss.method": "simclr", "clusters.method": None})
    assert with_shared_clusters(simclr, cache) is simclr
    kmeans = apply_overrides(base, {"loss.method": "clinfonce-kmeans", "clusters.method": None})
    assert shared_cluster_table(kmeans, cache) is None
    own = apply_overrides(base, {"clusters.table_path": str(other)})
    assert with_shared_clusters(own, cache).clusters.table_path == str(other)
    assert sorted(p.suffix for p in cache.glob("*.parquet")) == [".parquet"] * 2


@pytest.mark.parametrize(
    ("workers", "cpus", "gpu", "cluster", "expected"),
    [
        (2, 0.5, False, {"CPU": 4.0}, 2),  # (4 - 2 for Ray Data) / 1
        (1, 0.5, False, {"CPU": 4.0}, 4),
        (2, 1.0, False, {"CPU": 3.0}, 1),  # never below 1
        (2, 1.0, True, {"CPU": 64.0, "GPU": 4.0}, 2),  # the GPUs bound it
    ],
)
def test_concurrency_follows_the_cluster_and_the_trials_workers(
    workers: int, cpus: float, gpu: bool, cluster: dict, expected: int
) -> None:
    cfg = apply_overrides(TrainConfig(), {"run.num_workers": workers, "run.cpus_per_worker": cpus})
    assert derived_max_concurrent(cfg, cluster, gpu) == expected


def test_base_checks_before_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = load_space(
        _space(tmp_path, "search:\n  optim.lr: {type: grid, values: [0.1, 0.2]}\n"), QUICKSTART
    )
    ok = SearchSettings(name="s")
    check_base(QUICKSTART, grid, ok)
    no_val = apply_overrides(QUICKSTART, {"data.val_fraction": 0.0})
    with pytest.raises(ConfigError, match=r"data.val_fraction: a search scores the validation"):
        check_base(no_val, grid, ok)
    with pytest.raises(ConfigError, match="a grid needs --search random"):
        check_base(QUICKSTART, grid, SearchSettings(name="s", algorithm="optuna"))
    drawn = load_space(
        _space(tmp_path, "search:\n  optim.lr: {type: loguniform, low: 0.01, high: 1}\n"),
        QUICKSTART,
    )
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    with pytest.raises(
        ConfigError, match=r"needs the optuna extra: pip install 'clinfo-ray\[optuna\]'"
    ):
        check_base(QUICKSTART, drawn, SearchSettings(name="s", algorithm="optuna"))
    with pytest.raises(ConfigError, match="--name"):
        check_base(QUICKSTART, grid, SearchSettings(name="a/b"))


def test_random_search_limits_itself_and_optuna_is_limited_by_tune() -> None:
    from clinfo_ray.tuning.search import _search_algorithm

    algorithm, limit = _search_algorithm(QUICKSTART, SearchSettings(name="s"), 3)
    # Tune ignores max_concurrent_trials beside a generator: the generator limits itself
    assert limit is None and algorithm.max_concurrent == 3
    pytest.importorskip("optuna")
    settings = SearchSettings(name="s", algorithm="optuna")
    algorithm, limit = _search_algorithm(QUICKSTART, settings, 3)
    assert type(algorithm).__name__ == "OptunaSearch" and limit == 3


def test_a_search_folder_refuses_another_search(tmp_path: Path) -> None:
    space = load_space(
        _space(tmp_path, "search:\n  optim.lr: {type: grid, values: [0.1, 0.2]}\n"), QUICKSTART
    )
    settings = SearchSettings(name="s")
    folder = tmp_path / "tune" / "s"
    assert claim_search_dir(folder, QUICKSTART, space, settings) is False
    assert claim_search_dir(folder, QUICKSTART, space, settings) is True  # a rerun
    # the concurrency may change between runs
    concurrent = SearchSettings(name="s", max_concurrent=3)
    assert claim_search_dir(folder, QUICKSTART, space, concurrent) is True
    other = apply_overrides(QUICKSTART, {"optim.epochs": 7})
    with pytest.raises(ConfigError, match=r"started differently \(base.optim.epochs: 60 then, 7"):
        claim_search_dir(folder, other, space, settings)


def test_the_tune_command_fails_in_one_line_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _space(tmp_path, "search:\n  optim.lr: {type: grid, values: [0.1, -1]}\n")
    assert main(["tune", "--space", str(bad), "--config", "quickstart"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clinfo-ray tune: error: {bad} line 2: search: optim.lr: value -1")
    assert len(err.splitlines()) == 1
    good = _space(tmp_path, "search:\n  optim.lr: {type: grid, values: [0.1]}\n", "good.yaml")
    missing = ["--set", f"data.dataset_dir={tmp_path / 'nothing'}"]
    assert main(["tune", "--space", str(good), "--config", "quickstart", *missing]) == 2
    assert "data.dataset_dir" in capsys.readouterr().err


# ---- outputs, from made-up trials ----

RECORDS = [
    TrialRecord("t_00000", {"optim.lr": 0.1, "loss.temperature": 0.1}, COMPLETED, 4, 0.6, 0.7),
    TrialRecord("t_00001", {"optim.lr": 0.3, "loss.temperature": 0.1}, STOPPED, 1, 0.9, 0.9),
    TrialRecord("t_00002", {"optim.lr": 0.1, "loss.temperature": 0.2}, COMPLETED, 4, 0.8, 0.8),
    TrialRecord(
        "t_00003", {"optim.lr": 0.3, "loss.temperature": 0.2}, ERRORED, 0, None, None, "boom"
    ),
]


def _grid_space(tmp_path: Path) -> object:
    text = (
        "search:\n"
        "  optim.lr: {type: grid, values: [0.1, 0.3]}\n"
        "  loss.temperature: {type: grid, values: [0.1, 0.2]}\n"
    )
    return load_space(_space(tmp_path, text), QUICKSTART)


def test_the_best_trial_is_the_completed_one_with_the_best_final_score() -> None:
    assert best_record(RECORDS).trial_id == "t_00002"  # not the early-stopped 0.9
    unfinished = [r for r in RECORDS if r.status != COMPLETED]
    assert best_record(unfinished).trial_id == "t_00001"  # none completed: the best score
    assert best_record([RECORDS[3]]) is None


def test_outputs_csv_table_best_yaml_and_heatmap(tmp_path: Path) -> None:
    space = _grid_space(tmp_path)
    folder = tmp_path / "search"
    folder.mkdir()
    written = write_outputs(folder, RECORDS, space, QUICKSTART, "grid")
    with open(written["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["trial_id"] for r in rows] == [r.trial_id for r in RECORDS]
    assert list(rows[0]) == [
        "trial_id",
        "optim.lr",
        "loss.temperature",
        "status",
        "epochs",
        "final",
        "best",
        "error",
    ]
    assert rows[3]["status"] == "errored" and rows[3]["error"] == "boom"
    best = load_config(written["best"])
    assert best == best_config(QUICKSTART, RECORDS[2], "grid")
    assert best == apply_overrides(
        QUICKSTART, {"optim.lr": 0.1, "loss.temperature": 0.2, "run.name": "grid-best"}
    )
    assert Path(written["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(RECORDS, space.keys, best_record(RECORDS)).splitlines()
    assert table[0].split() == [
        "trial",
        "optim.lr",
        "loss.temperature",
        "status",
        "epochs",
        "final",
        "best",
    ]
    assert table[2].startswith("t_00001") and table[3].startswith("t_00002 *")
    assert table[-1] == "t_00003: boom"


def test_plots_of_one_key_and_of_two_continuous_keys(tmp_path: Path) -> None:
    one = load_space(
        _space(tmp_path, "search:\n  optim.lr: {type: loguniform, low: 0.01, high: 1}\n"),
        QUICKSTART,
    )
    records = [
        TrialRecord(f"t{i}", {"optim.lr": 0.01 * 1.5**i}, COMPLETED, 2, 0.1 * i, 0.1 * i)
        for i in range(10)
    ]
    assert plot(tmp_path / "one.png", records, one, "one").is_file()
    two = load_space(
        _space(
            tmp_path,
            "search:\n  optim.lr: {type: loguniform, low: 0.01, high: 1}\n"
            "  loss.temperature: {type: uniform, low: 0.05, high: 0.5}\n",
            "two.yaml",
        ),
        QUICKSTART,
    )
    drawn = [
        TrialRecord(
            f"t{i}",
            {"optim.lr": 0.01 * 1.5**i, "loss.temperature": 0.05 + 0.04 * i},
            COMPLETED,
            2,
            math.sin(i) ** 2,
            math.sin(i) ** 2,
        )
        for i in range(11)
    ]
    assert plot(tmp_path / "two.png", drawn, two, "two").is_file()
    assert plot(tmp_path / "none.png", [RECORDS[3]], two, "none") is None
