"""A study whose folder, or whose published results, are in a bucket of the session's S3 server
(no Ray): the first test read, the trials' records (one file each: a bucket cannot append),
adopting published trials, the wall clock, and the page written from and into the bucket. The
trials themselves train in a bucket in tests/test_study.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinfo_ray.commands.main import main
from clinfo_ray.config import parse_set_overrides
from clinfo_ray.storage import location as loc
from clinfo_ray.study.records import StudyMeta, read_records, write_meta
from clinfo_ray.study.rules import RULES_FILE, read_first_test_read, record_first_test_read
from clinfo_ray.study.run import (
    RECORD_FILE,
    TRIALS_DIR,
    WALL_FILE,
    adopt_published,
    folder_records,
    study_dir,
    study_records,
    trial_name,
)
from clinfo_ray.study.study_file import load_study
from tests.study_data import STUDY_FILE, trial
from tests.study_data import study_records as page_records


def _study(tmp_path: Path, output_dir: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "small.yaml"
    path.write_text(STUDY_FILE.format(extra=""))
    return load_study(path, parse_set_overrides([f"run.output_dir={output_dir}"]))


def _published(tmp_path: Path, study) -> Path:  # type: ignore[no-untyped-def]
    """A committed results folder: a record of every trial of the grid, and its meta.json."""
    out = tmp_path / "published"
    out.mkdir()
    records = [
        trial(t["method"], t["seed"], 0.5 + 0.01 * t["seed"], 0.6, None) for t in study.grid()
    ]
    (out / "results.jsonl").write_text("".join(r.to_json() + "\n" for r in records))
    first = {"date": "2026-12-06", "commit": "abc", "digests": study.rules()}
    rules = {"first_test_read": first, "changes": []}
    write_meta(out / "meta.json", StudyMeta("small", "c", "m", "2026-12-06", 42.0, rules=rules))
    return out


def test_the_first_test_read_in_a_bucket_is_written_once(tmp_path: Path, s3_prefix: str) -> None:
    study = _study(tmp_path, s3_prefix)
    record_first_test_read(s3_prefix, study)
    first = read_first_test_read(s3_prefix)
    assert first["digests"] == study.rules()
    loc.write_text(loc.join(s3_prefix, RULES_FILE), json.dumps({**first, "date": "1999-01-01"}))
    record_first_test_read(s3_prefix, study)  # never overwritten
    assert read_first_test_read(s3_prefix)["date"] == "1999-01-01"


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_published_trials_are_adopted_into_the_studys_folder(
    tmp_path: Path, s3_prefix: str, where: str
) -> None:
    runs = s3_prefix if where == "bucket" else str(tmp_path / "runs")
    study = _study(tmp_path, runs)
    out = _published(tmp_path, study)
    folder = study_dir(study)
    assert folder == loc.join(runs, "study", "small")
    assert adopt_published(study, str(out)) == len(study.grid()) == 6
    expected = read_records(out / "results.jsonl")
    assert study_records(study, folder_records(folder)) == expected
    record = loc.join(folder, TRIALS_DIR, trial_name("tags", 1), RECORD_FILE)
    assert json.loads(loc.read_text(record))["adopted_from"] == str(out)
    assert read_first_test_read(folder)["commit"] == "abc"
    assert json.loads(loc.read_text(loc.join(folder, WALL_FILE)))["seconds"] == 42.0
    assert loc.is_file(loc.join(folder, "results.jsonl")) == (where == "local")
    assert adopt_published(study, str(out)) == 0  # taken once
    assert len(folder_records(folder)) == 6


def test_the_wall_clock_keeps_its_time_in_a_bucket(s3_prefix: str) -> None:
    from clinfo_ray.commands.study import WallClock

    with WallClock(s3_prefix, every=10.0) as first:
        pass
    with WallClock(s3_prefix, every=10.0) as second:
        assert second.before == first.total > 0
    saved = json.loads(loc.read_text(loc.join(s3_prefix, WALL_FILE)))["seconds"]
    assert saved == second.total >= first.total


def test_the_page_is_written_from_and_into_a_bucket_as_it_is_locally(
    tmp_path: Path, s3_prefix: str
) -> None:
    study = _study(tmp_path, str(tmp_path / "runs"))
    meta = StudyMeta("small", "clinfo-ray study", "2 CPUs", "2026-12-06", 10.0)
    local = tmp_path / "out"
    local.mkdir()
    raw = "".join(r.to_json() + "\n" for r in page_records())
    (local / "results.jsonl").write_text(raw)
    write_meta(local / "meta.json", meta)
    loc.write_text(loc.join(s3_prefix, "results.jsonl"), raw)
    loc.write_bytes(loc.join(s3_prefix, "meta.json"), (local / "meta.json").read_bytes())
    config = ["study", "--config", str(study.path)]
    assert main([*config, "--out", str(local), "--report-only"]) == 0
    assert main([*config, "--out", s3_prefix, "--report-only"]) == 0
    names = sorted(p.name for p in local.iterdir())
    assert "results.md" in names and any(n.endswith(".png") for n in names)
    assert loc.list_names(s3_prefix) == names
    for name in names:  # the same bytes: page, plots and raw files
        assert loc.read_bytes(loc.join(s3_prefix, name)) == (local / name).read_bytes(), name


def test_a_page_outside_a_bucket_out_fails_in_one_line(
    tmp_path: Path, s3_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _study(tmp_path, str(tmp_path / "runs"))
    argv = ["study", "--config", str(study.path), "--out", s3_prefix]
    assert main([*argv, "--page", str(tmp_path / "page.md"), "--report-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--page" in err and "bucket" in err
    assert main([*argv, "--report-only"]) == 2  # nothing published there yet
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and s3_prefix in err


def test_a_study_folder_in_a_missing_bucket_fails_before_ray_naming_the_key(
    tmp_path: Path, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _study(tmp_path, str(tmp_path / "runs"))
    argv = [
        "study",
        "--config",
        str(study.path),
        "--set",
        "run.output_dir=s3://no-such-bucket/runs",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("clinfo-ray study: error: run.output_dir: s3://no-such-bucket/runs/")
    assert "no bucket 'no-such-bucket'" in err
