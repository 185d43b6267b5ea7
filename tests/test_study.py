"""``clinfo-ray study`` end to end on the session Ray and the shapes dataset: every (method,
seed) trained as a Tune trial, two side by side, and evaluated once (the probe's setting chosen
by cross-validation on the fitting rows, then one probe scoring the validation and the test
split once each), the raw results, the page and plots; the same command again trains nothing;
``--report-only`` rewrites the page byte for byte from the raw files alone. The setting search
runs in a bucket of the session's S3 server (its trials' runs, records and Tune's experiment
there, nothing on disk), and a study whose run folder is gone adopts its published trials into
a bucket."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from clinfo_ray.commands.main import main
from clinfo_ray.storage import location as loc
from clinfo_ray.study.records import read_records
from clinfo_ray.study.run import folder_records

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CONFIG = """\
data:
  dataset_dir: {data}
  image_size: 16
  batch_size_per_worker: 8
  augment_on: worker
  cache: worker
  val_fraction: 0.3
clusters:
  top_k: 2
model:
  cnn_width: 8
optim:
  epochs: 2
  warmup_epochs: 1
eval:
  knn_every: 0
  knn_k: 5
run:
  output_dir: {out}
  num_workers: 1
  cpus_per_worker: 0.5
"""

STUDY = """\
study:
  name: tiny
  config: {config}
  seeds: [0, 1]
  probe: {{weight_decays: [0.0, 0.01], epochs: [5]}}
methods:
  simclr: {{about: SimCLR, set: {{loss.method: simclr}}}}
  tags: {{about: tag clusters, set: {{loss.method: clinfonce, clusters.method: tags}}}}
  supcon: {{about: the labels, set: {{loss.method: supcon}}}}
claims:
  - {{id: "1", text: tags beat SimCLR, kind: paired, better: [tags], worse: simclr,
      reference: supcon}}
  - {{id: "4", text: accuracy rises with I(Z;T), kind: description, methods: [tags, supcon]}}
notes: ["A tiny study of drawn shapes."]
"""
METHODS, SEEDS = ("simclr", "tags", "supcon"), (0, 1)

# A setting search: two settings, scored on the validation split only.
SETTINGS = """\
study:
  name: settings
  config: {config}
  seeds: [0]
  evaluate_test: false
  probe: {{weight_decays: [0.0], epochs: [5]}}
settings:
  narrow: {{set: {{model.cnn_width: 4}}}}
  short: {{set: {{optim.epochs: 1, optim.warmup_epochs: 0}}}}
methods:
  simclr: {{set: {{loss.method: simclr}}}}
"""


@dataclass
class Study:
    args: list[str]
    folder: Path  # the study's runs
    out: Path  # raw results, plots, page
    first_page: bytes
    before_rerun: dict[str, int]  # checkpoint file -> mtime_ns
    settings_out: Path  # the setting search's raw results and page
    settings_folder: str  # in the bucket
    settings_files: list[str]  # what the search's first invocation wrote there


def _checkpoint_files(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.glob("trials/*/checkpoint_*/*")}


@pytest.fixture(scope="module")
def study(shapes_dataset: Path, s3_bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Study:
    root = tmp_path_factory.mktemp("study")
    config = root / "tiny_config.yaml"
    config.write_text(CONFIG.format(data=shapes_dataset, out=root / "runs"))
    path = root / "tiny.yaml"
    path.write_text(STUDY.format(config=config))
    out = root / "out"
    args = ["--config", str(path), "--out", str(out), "--max-concurrent", "2"]
    assert main(["study", *args]) == 0
    folder = root / "runs" / "study" / "tiny"
    first = (out / "results.md").read_bytes()
    before = _checkpoint_files(folder)
    assert main(["study", *args]) == 0  # the same command again
    search = root / "settings.yaml"
    search.write_text(SETTINGS.format(config=config))
    settings_out = root / "settings_out"
    runs = f"{s3_bucket}/study-{secrets.token_hex(4)}"
    in_bucket = ["--set", f"run.output_dir={runs}"]
    settings_args = ["study", "--config", str(search), "--out", str(settings_out), *in_bucket]
    assert main(settings_args) == 0
    settings = f"{runs}/study/settings"
    written = loc.list_files(settings)
    assert main(settings_args) == 0  # again: Tune's experiment restored from the bucket
    assert not (root / "runs" / "study" / "settings").exists()
    return Study(args, folder, out, first, before, settings_out, settings, written)


def test_every_method_and_seed_is_evaluated_once_with_the_probe_chosen_by_cross_validation(
    study: Study,
) -> None:
    records = read_records(study.out / "results.jsonl")
    assert [(r.method, r.seed) for r in records] == [(m, s) for m in METHODS for s in SEEDS]
    for r in records:
        assert r.test is not None and set(r.test) >= {"linear_top1", "knn_top1", "linear_top5"}
        assert all(0.0 <= v <= 1.0 for v in [*r.val.values(), *r.test.values()])
        assert r.probe["weight_decay"] in (0.0, 0.01) and r.probe["epochs"] == 5
        assert r.epochs == 2 and r.train_seconds > 0 and r.eval_seconds > 0
        run = study.folder / "trials" / f"{r.method}-seed{r.seed}"
        details = json.loads((run / "study_record.json").read_text())
        grid = details["probe_grid"]
        assert len(grid) == 2
        best = max(grid, key=lambda t: t["cv_top1"])  # the first of equals, as max keeps
        assert all("val_top1" not in t for t in grid)  # validation scores no setting
        assert r.probe["cv_top1"] == best["cv_top1"] and r.probe["folds"] == 3
        assert r.probe["weight_decay"] == best["weight_decay"]
        assert r.protocol == 2
        assert details["rows"]["val"] > 0 and details["rows"]["test"] == 12
        config = json.loads((run / "config.json").read_text())
        assert config["run"]["seed"] == r.seed and config["loss"]["method"] == r.loss_method
    by = {(r.method, r.seed): r for r in records}
    for seed in SEEDS:  # the clusters' information about the labels
        tags, supcon = by[("tags", seed)].clusters, by[("supcon", seed)].clusters
        assert tags is not None and supcon is not None
        assert supcon["conditional_entropy_bits"] == pytest.approx(0.0, abs=1e-9)  # Z = T
        assert 0.0 < tags["mutual_information_bits"] <= supcon["mutual_information_bits"] + 1e-9


def test_the_page_and_plots_come_from_the_records(study: Study) -> None:
    page = (study.out / "results.md").read_text()
    for method in METHODS:
        assert method in page
    assert "A tiny study of drawn shapes." in page and "tags beat SimCLR" in page
    for png in ("accuracy_by_method.png", "accuracy_vs_mi.png"):
        assert (study.out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((study.out / "meta.json").read_text())
    assert meta["name"] == "tiny" and meta["wall_seconds"] > 10  # both invocations


def test_meta_records_the_rules_under_which_the_test_split_was_first_read(study: Study) -> None:
    from clinfo_ray.study.rules import code_commit
    from clinfo_ray.study.study_file import load_study

    rules = json.loads((study.out / "meta.json").read_text())["rules"]
    first = rules["first_test_read"]
    assert first["digests"] == load_study(study.args[1]).rules()
    # the checkout's commit when the trial read the test split (HEAD may move during a run)
    commit = first["commit"].removesuffix("-dirty")
    assert re.fullmatch(r"[0-9a-f]{12}", commit) or first["commit"] == code_commit() == "unknown"
    assert rules["changes"] == []
    assert (study.folder / "rules.json").is_file()
    assert "None of them changed after that." in (study.out / "results.md").read_text()
    # the setting search never reads the test split: no record
    assert json.loads((study.settings_out / "meta.json").read_text())["rules"] == {}


def test_the_same_command_again_trains_nothing(study: Study) -> None:
    assert study.before_rerun and _checkpoint_files(study.folder) == study.before_rerun
    assert len(read_records(study.folder / "results.jsonl")) == len(METHODS) * len(SEEDS)


def test_report_only_rewrites_the_page_and_plots_byte_for_byte(study: Study) -> None:
    files = ("results.md", "accuracy_by_method.png", "accuracy_vs_mi.png")
    before = {name: (study.out / name).read_bytes() for name in files}
    for name in files:
        (study.out / name).unlink()
    assert main(["study", *study.args, "--report-only"]) == 0
    assert {name: (study.out / name).read_bytes() for name in files} == before


def test_a_setting_search_trains_each_setting_and_never_reads_the_test_split(
    study: Study,
) -> None:
    records = read_records(study.settings_out / "results.jsonl")
    assert [(r.setting, r.method, r.seed) for r in records] == [
        ("narrow", "simclr", 0),
        ("short", "simclr", 0),
    ]
    assert all(r.test is None and 0.0 <= r.val["linear_top1"] <= 1.0 for r in records)
    trials = f"{study.settings_folder}/trials"
    narrow = json.loads(loc.read_text(f"{trials}/narrow-simclr-seed0/config.json"))
    short = json.loads(loc.read_text(f"{trials}/short-simclr-seed0/config.json"))
    assert (narrow["model"]["cnn_width"], narrow["optim"]["epochs"]) == (4, 2)
    assert (short["model"]["cnn_width"], short["optim"]["epochs"]) == (8, 1)
    details = json.loads(loc.read_text(f"{trials}/short-simclr-seed0/study_record.json"))
    assert "test" not in details["rows"]  # no test row was embedded, let alone scored
    assert folder_records(study.settings_folder) == records  # each trial's record file
    checkpoints = [f for f in study.settings_files if "/checkpoint_" in f]
    assert {f.split("/trials/")[1].split("/")[0] for f in checkpoints} == {
        "narrow-simclr-seed0",
        "short-simclr-seed0",
    }
    assert any("/tuner/" in f for f in study.settings_files)  # Tune's experiment too
    # the same command again trained nothing: no checkpoint object added or removed
    assert [f for f in loc.list_files(study.settings_folder) if "/checkpoint_" in f] == checkpoints
    page = (study.settings_out / "results.md").read_text()
    assert "## Setting search" in page and "narrow" in page and "short" in page


def test_collect_publishes_the_study_so_far_without_training(study: Study) -> None:
    published = study.out.parent / "published"
    before = _checkpoint_files(study.folder)
    assert main(["study", *study.args[:2], "--out", str(published), "--collect"]) == 0
    assert _checkpoint_files(study.folder) == before  # nothing trained
    assert read_records(published / "results.jsonl") == read_records(study.out / "results.jsonl")
    meta = json.loads((published / "meta.json").read_text())
    assert meta["planned_trials"] == len(METHODS) * len(SEEDS) and meta["wall_seconds"] > 10
    assert "--collect" not in meta["command"]  # the command that trains the study
    assert f"- Trials: {len(METHODS) * len(SEEDS)}\n" in (published / "results.md").read_text()


def test_a_study_whose_run_folder_is_gone_adopts_its_published_trials_into_a_bucket(
    study: Study, s3_prefix: str
) -> None:
    """A later session: a fresh checkout has the committed raw results but no run folder; its
    runs now go to a bucket."""
    args = [*study.args, "--set", f"run.output_dir={s3_prefix}"]
    assert main(["study", *args]) == 0
    folder = f"{s3_prefix}/study/tiny"
    trials = loc.list_names(f"{folder}/trials")
    assert len(trials) == len(METHODS) * len(SEEDS)
    for name in trials:  # nothing trained again: a record file and nothing else
        assert loc.list_names(f"{folder}/trials/{name}") == ["study_record.json"]
    published = read_records(study.out / "results.jsonl")
    assert sorted(folder_records(folder), key=published.index) == published
    rules = json.loads((study.out / "meta.json").read_text())["rules"]
    assert json.loads(loc.read_text(f"{folder}/rules.json")) == rules["first_test_read"]
