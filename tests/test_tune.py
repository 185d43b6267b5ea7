"""``clinfo-ray tune`` end to end on the session Ray and the shapes dataset, one search: ASHA
stops a trial early and a later trial still gets its workers and trains to the end (no trial
keeps its placement group); crashing trials are recorded as errored while the search goes on;
its driver is killed and the same command run again resumes it, the finished trials untouched
and the killed one resuming its own checkpoints; a third run trains nothing; the outputs, and
best.yaml training as it is."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clinfo_ray.commands.main import main
from clinfo_ray.config import apply_overrides, load_config
from clinfo_ray.training.launch import with_absolute_paths
from tests.datasets import tiny_run_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


# Six trials, one at a time, in grid order (the first key varies fastest):
#   0: batch 8, knn_k 5      trains
#   1: batch 1000, knn_k 5   crashes: more than the training rows, the trial's run refuses it
#   2: batch 8, knn_k 1000   every training row votes alike (all of them, one weight): each
#                            validation image gets the training rows' majority class, a score
#                            whatever the model (val_fraction 0.3 of the shapes: 18 circles vs
#                            17 squares train, 6 of 13 validation images are circles: 0.46),
#                            below the trained 5-NN's: ASHA (rungs at epochs 1 and 2) stops it
#                            at epoch 1
#   3: batch 1000, knn_k 1000  crashes
#   4: batch 8, knn_k 5      trial 0's config (the same seed: the same scores): ASHA lets it on;
#                            it has to get the workers the stopped trial held. The driver is
#                            killed while it trains and the command run again resumes it.
#   5: batch 1000, knn_k 5   crashes (after the resume)
SPACE = """\
set:
  clusters.method: tags
  eval.knn_temperature: 1.0e9
search:
  data.batch_size_per_worker: {type: grid, values: [8, 1000]}
  eval.knn_k: {type: grid, values: [5, 1000, 5]}
"""
EPOCHS = 4
NAME = "grid"


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: (size, mtime)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _worker_groups() -> dict[str, str]:
    """id -> state of every placement group of Train workers (bundles of 0.5 CPU) in the
    session's Ray."""
    import ray

    return {
        pg_id: entry["state"]
        for pg_id, entry in ray.util.placement_group_table().items()
        if entry["bundles"] and all(b == {"CPU": 0.5} for b in entry["bundles"].values())
    }


def _trial_statuses(experiment: Path) -> dict[str, str]:
    """trial id -> status in Tune's saved experiment state (what a restore reads)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        saved = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being written
        return {}
    trials = [json.loads(entry[0]) for entry in saved["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def _run_log(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _epochs_logged(run_dir: Path) -> int:
    return sum(1 for r in _run_log(run_dir) if r.get("event") == "epoch")


@dataclass
class Search:
    args: list[str]
    config: Path
    folder: Path
    ids: list[str] = field(default_factory=list)  # trial ids, in order
    before_kill: dict[str, tuple[int, int]] = field(default_factory=dict)  # trial 0's files
    groups_while_training: dict[str, str] = field(default_factory=dict)  # before the kill
    groups_after: dict[str, str] = field(default_factory=dict)
    guards_after: list[str] = field(default_factory=list)

    def run(self) -> int:
        return main(["tune", *self.args])

    def rows(self) -> list[dict[str, str]]:
        with open(self.folder / "trials.csv") as handle:
            return list(csv.DictReader(handle))


def _wait_to_kill(search: Search, driver: subprocess.Popen) -> None:
    """Until Tune has saved trials 0-3 as over and trial 4 has trained some epochs, not all,
    with a checkpoint Ray Train has taken in (two epochs logged: the first one's is)."""
    deadline = time.monotonic() + 300
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline and driver.poll() is None:
        statuses = _trial_statuses(search.folder / "tuner")
        ids = sorted(statuses)
        over = [statuses[i] for i in ids[:4]]
        if len(ids) >= 5 and over == ["TERMINATED", "ERROR", "TERMINATED", "ERROR"]:
            run = search.folder / "trials" / ids[4]
            done = _epochs_logged(run)
            if 2 <= done < EPOCHS and (run / "checkpoint_manager_snapshot.json").is_file():
                search.ids = ids
                return
        time.sleep(0.1)
    pytest.fail(f"no moment to kill the driver at (driver exit {driver.poll()}): {statuses}")


@pytest.fixture(scope="module")
def search(shapes_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Search:
    """The search run by a driver of its own, killed while trial 4 trains, then the same
    command run again (here): it resumes."""
    import ray

    root = tmp_path_factory.mktemp("tune")
    config = root / "tiny.yaml"
    # a tiny run: one worker at half a CPU, 4 epochs of 16-px shapes
    config.write_text(tiny_run_config(shapes_dataset, root / "runs", epochs=EPOCHS, lr=0.3))
    space = root / f"{NAME}.yaml"
    space.write_text(SPACE)
    args = ["--space", str(space), "--config", str(config), "--max-concurrent", "1"]
    args += ["--grace-period", "1", "--reduction-factor", "2"]
    found = Search(args, config, root / "runs" / "tune" / NAME)
    known = set(_worker_groups())
    address = ray.get_runtime_context().gcs_address
    with open(root / "driver.log", "w") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "clinfo_ray", "tune", *args, "--address", address],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_to_kill(found, driver)
            found.before_kill = _files(found.folder / "trials" / found.ids[0])
            found.groups_while_training = {
                pg: state for pg, state in _worker_groups().items() if pg not in known
            }
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=60)
    assert found.run() == 0  # the same command again
    found.groups_after = {pg: state for pg, state in _worker_groups().items() if pg not in known}
    found.guards_after = _run_guards_after(deadline_s=20.0)
    return found


def _run_guards_after(deadline_s: float) -> list[str]:
    """The trials' run guards still alive ``deadline_s`` after the search (each trial that
    ended through its cleanup dismisses its own; a kill takes a moment)."""
    import ray

    from clinfo_ray.tuning.trainable import GUARD_NAME

    end = time.monotonic() + deadline_s
    while True:
        guards = [
            actor["name"]
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith(GUARD_NAME)
        ]
        if not guards or time.monotonic() > end:
            return guards
        time.sleep(0.5)


def test_asha_stops_a_trial_early_and_the_next_trial_still_trains(search: Search) -> None:
    rows = search.rows()
    assert len(rows) == 6 and [r["trial_id"] for r in rows][:5] == search.ids[:5]
    summary = [(r["eval.knn_k"], r["status"], r["epochs"]) for r in rows[::2]]
    assert summary == [
        ("5", "completed", "4"),
        ("1000", "stopped early", "1"),
        ("5", "completed", "4"),
    ], rows
    first, vote, again = rows[::2]
    assert float(vote["final"]) < float(first["final"])
    # the same config and seed: the same scores, trained after the stopped trial
    assert (again["final"], again["best"]) == (first["final"], first["best"])
    # while trial 4 trained, the workers of trials 0 and 2 (completed, stopped) were gone
    states = list(search.groups_while_training.values())
    assert states.count("CREATED") == 1 and states.count("REMOVED") >= 2, states
    assert set(search.groups_after.values()) == {"REMOVED"}  # and in the end every one
    assert search.guards_after == []  # no trial left its run's guard behind
    for row in rows[::2]:  # every trial a training run of its own, named by its trial id
        run = search.folder / "trials" / row["trial_id"]
        assert (run / "metrics.jsonl").is_file() and (run / "tensorboard").is_dir()


def test_the_trials_share_one_cluster_table(search: Search) -> None:
    assert len(list((search.folder / "clusters").glob("*.parquet"))) == 1
    tables = {
        json.loads((search.folder / "trials" / i / "config.json").read_text())["clusters"][
            "table_path"
        ]
        for i in search.ids[::2]
    }
    assert len(tables) == 1


def test_crashing_trials_are_errored_and_the_search_goes_on(search: Search) -> None:
    crashed = search.rows()[1::2]
    assert [r["status"] for r in crashed] == ["errored"] * 3
    assert all("batch_size_per_worker" in r["error"] for r in crashed), crashed


def test_the_killed_search_resumed_without_training_a_finished_trial_again(
    search: Search,
) -> None:
    assert _files(search.folder / "trials" / search.ids[0]) == search.before_kill
    # the trial killed while training took up its own checkpoints: it did not start over
    records = _run_log(search.folder / "trials" / search.ids[4])
    assert "resume" in [r["event"] for r in records], records
    assert max(r["epoch"] for r in records if r["event"] == "epoch") == EPOCHS


def test_running_the_search_again_trains_nothing(search: Search) -> None:
    trials = search.folder / "trials"
    before = _files(trials)
    rows = search.rows()
    assert search.run() == 0
    assert _files(trials) == before
    assert search.rows() == rows


def test_the_outputs_and_best_yaml_trains_as_it_is(search: Search) -> None:
    assert (search.folder / f"{NAME}.png").read_bytes()[:4] == b"\x89PNG"
    best_path = search.folder / "best.yaml"
    best = load_config(best_path)
    fixed = ["clusters.method=tags", "eval.knn_temperature=1.0e9"]
    base = with_absolute_paths(load_config(search.config, fixed))
    chosen = {"data.batch_size_per_worker": 8, "eval.knn_k": 5, "run.name": f"{NAME}-best"}
    assert best == apply_overrides(base, chosen)
    assert main(["train", "--config", str(best_path)]) == 0
    trained = Path(best.run.output_dir) / f"{NAME}-best"
    assert (trained / f"checkpoint_epoch{EPOCHS:04d}").is_dir()
