"""A Tune search whose dataset and folder are in a bucket (the session's S3 server on
127.0.0.1): Tune's experiment, the trials' runs and the outputs are written there, nothing
locally; the same command again restores the search from the bucket and trains nothing again;
the best config is read back from its URI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from clinfo_ray.commands.main import main
from clinfo_ray.config import load_config
from clinfo_ray.storage import location as loc
from clinfo_ray.training.run_log import METRICS_FILE
from tests.datasets import tiny_run_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPACE = """\
set:
  clusters.method: tags
search:
  loss.temperature: {type: grid, values: [0.1, 0.5]}
"""


def _epochs_logged(trials: str) -> dict[str, int]:
    """trial id -> the epoch records its run wrote to the bucket."""
    out = {}
    for log in loc.list_files(trials, METRICS_FILE):
        lines = loc.read_text(log).splitlines()
        trial = loc.name(loc.parent(log))
        out[trial] = sum(json.loads(line).get("event") == "epoch" for line in lines)
    return out


def test_a_search_in_a_bucket_runs_resumes_and_writes_its_outputs_there(
    shapes_dataset: Path,
    s3_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory either
    data = loc.join(s3_prefix, "data")
    loc.upload_dir(shapes_dataset, data)
    (tmp_path / "tiny.yaml").write_text(tiny_run_config(data, loc.join(s3_prefix, "runs")))
    (tmp_path / "temps.yaml").write_text(SPACE)
    args = ["tune", "--space", "temps.yaml", "--config", "tiny.yaml", "--scheduler", "fifo"]
    args += ["--max-concurrent", "1"]
    assert main(args) == 0
    folder = loc.join(s3_prefix, "runs", "tune", "temps")
    printed = capsys.readouterr().out
    assert f"trials:  {loc.join(folder, 'trials.csv')}" in printed
    rows = list(csv.DictReader(io.StringIO(loc.read_text(loc.join(folder, "trials.csv")))))
    assert sorted(float(r["loss.temperature"]) for r in rows) == [0.1, 0.5]
    assert {r["status"] for r in rows} == {"completed"} and all(r["final"] for r in rows)
    trials = loc.join(folder, "trials")
    logged = _epochs_logged(trials)
    assert sorted(logged) == sorted(r["trial_id"] for r in rows)
    assert set(logged.values()) == {2}
    assert loc.is_file(loc.join(folder, "search.json"))
    assert loc.list_files(loc.join(folder, "tuner"))  # Tune's experiment state, in the bucket
    assert loc.read_bytes(loc.join(folder, "temps.png")).startswith(b"\x89PNG")
    # each trial built its own table in its own run folder (no lock in a bucket to share one)
    for trial in logged:
        assert loc.is_file(loc.join(trials, trial, "clusters", "tags.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["temps.yaml", "tiny.yaml"]

    assert main(args) == 0  # the same command again: restored from the bucket
    assert _epochs_logged(trials) == logged  # no trial trained again
    again = list(csv.DictReader(io.StringIO(loc.read_text(loc.join(folder, "trials.csv")))))
    assert again == rows

    best_uri = loc.join(folder, "best.yaml")
    best = load_config(best_uri)  # a config read from its URI, as `train --config` does
    top = max(float(r["final"]) for r in rows)
    winners = {float(r["loss.temperature"]) for r in rows if float(r["final"]) == top}
    assert best.loss.temperature in winners
    assert best.run.output_dir == loc.join(s3_prefix, "runs") and best.run.name == "temps-best"
