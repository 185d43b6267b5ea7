"""The mechanical record of a study's rules: the first test read is written once, and a page
written later under changed rules records and lists the change (no Ray)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from clinfo_ray.commands.main import main
from clinfo_ray.study.records import StudyMeta, read_meta, write_meta
from clinfo_ray.study.rules import (
    RULES_FILE,
    code_commit,
    read_first_test_read,
    record_first_test_read,
    updated_rules,
)
from clinfo_ray.study.study_file import load_study
from tests.study_data import STUDY_FILE as STUDY
from tests.study_data import study_records


def _study_file(tmp_path: Path, text: str = STUDY) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(text.format(extra=""))
    return path


def test_the_first_test_read_is_recorded_once_even_by_trials_side_by_side(tmp_path: Path) -> None:
    study = load_study(_study_file(tmp_path))
    folder = tmp_path / "study"
    threads = [
        threading.Thread(target=record_first_test_read, args=(folder, study)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = read_first_test_read(folder)
    assert first["digests"] == study.rules() and first["commit"] == code_commit()
    (folder / RULES_FILE).write_text(json.dumps({**first, "date": "1999-01-01"}))
    record_first_test_read(folder, study)  # never overwritten
    assert read_first_test_read(folder)["date"] == "1999-01-01"


def test_no_rules_before_the_test_split_is_read(tmp_path: Path) -> None:
    assert updated_rules({}, {}, load_study(_study_file(tmp_path))) == {}


def test_a_change_after_the_first_read_is_appended_once(tmp_path: Path) -> None:
    before = load_study(_study_file(tmp_path))
    first = {"date": "2026-12-06", "commit": "abc", "digests": before.rules()}
    rules = updated_rules({}, first, before)
    assert rules == {"first_test_read": first, "changes": []}
    after = load_study(_study_file(tmp_path, STUDY.replace("epochs: [50]", "epochs: [60]")))
    changed = updated_rules(rules, {}, after)
    assert [c["changed"] for c in changed["changes"]] == [["probe"]]
    assert changed["changes"][0]["digests"] == after.rules()
    assert updated_rules(changed, {}, after) == changed  # the same rules again: nothing new


def test_report_only_under_changed_rules_records_and_shows_the_change(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text("".join(r.to_json() + "\n" for r in study_records()))
    study = load_study(_study_file(tmp_path))
    first = {"date": "2026-12-06", "commit": "abc", "digests": study.rules()}
    rules = updated_rules({}, first, study)
    meta = StudyMeta("small", "clinfo-ray study", "2 CPUs", "2026-12-06", 10.0, rules=rules)
    write_meta(out / "meta.json", meta)
    page = tmp_path / "page.md"
    argv = [
        "study",
        "--config",
        str(tmp_path / "small.yaml"),
        "--out",
        str(out),
        "--page",
        str(page),
    ]
    assert main([*argv, "--report-only"]) == 0
    assert "None of them changed after that." in page.read_text()
    _study_file(tmp_path, STUDY.replace("text: r,", "text: reworded,"))
    assert main([*argv, "--report-only"]) == 0
    recorded = read_meta(out / "meta.json").rules["changes"]
    assert [c["changed"] for c in recorded] == [["claims"]]
    assert "the study's claims changed" in page.read_text()
    assert main([*argv, "--report-only"]) == 0  # again: recorded once, page unchanged
    assert len(read_meta(out / "meta.json").rules["changes"]) == 1
