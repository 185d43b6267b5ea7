"""How a Tune trial frees its Train run when Tune stops it, on the session Ray and the shapes
dataset: one tiny run per trial (1 worker at half a CPU, 16-px shapes).

- Stopped before its first report (its worker waiting for data that never comes: the test
  reserves the spare CPUs Ray Data's tasks need), the trial never gets its ``stop()``; Tune kills
  its actor, and the run's placement group is removed all the same.
- Stopped while its controller is stuck (a Train callback that blocks the controller's event
  loop after handing Tune the first report), the abort times out: the trial kills the
  controller, removes the group and raises, saying so.
- A run that crashes while it is being stopped (a Train callback raising while the abort
  waits) makes ``stop()`` raise that crash; a run that stops as asked (its ``fit()`` ending
  with the controller's death) makes it return quietly.

Tune ignores what a trial's ``stop()`` raises (it has recorded the trial as stopped by then), so
these trials record it themselves: :class:`RecordsItsStop` writes it to a file.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.train
from ray import tune

from clinfo_ray.config import load_config
from clinfo_ray.training import launch
from clinfo_ray.training.launch import with_absolute_paths
from clinfo_ray.training.run_log import METRICS_FILE
from clinfo_ray.training.worker import PID_DIR
from clinfo_ray.tuning import trainable
from clinfo_ray.tuning.trainable import (
    GUARD_NAME,
    TRIAL_ACTOR_RESOURCES,
    StopsItsTrainRun,
    make_trainable,
    run_trial,
)
from clinfo_ray.tuning.trial import TrialPlan

pytestmark = [pytest.mark.ray, pytest.mark.slow]

WORKER_CPUS = 0.5
CONFIG = """\
data:
  dataset_dir: {data}
  image_size: 16
  batch_size_per_worker: 8
  augment_on: worker
  cache: {cache}
  val_fraction: 0.3
clusters:
  method: tags
  top_k: 2
model:
  cnn_width: 8
optim:
  epochs: 3
  warmup_epochs: 1
run:
  name: tiny
  output_dir: {root}/runs
  num_workers: 1
  cpus_per_worker: {cpus}
"""
RELEASE_DEADLINE_S = 30.0
TUNE_BUDGET_S = 240.0  # a search that hangs ends here (and its test fails)
CRASH = "the metrics sink broke while the trial was stopping"


def _plan(dataset: Path, root: Path, cache: str) -> TrialPlan:
    path = root / "tiny.yaml"
    path.write_text(CONFIG.format(data=dataset, root=root, cache=cache, cpus=WORKER_CPUS))
    return TrialPlan(with_absolute_paths(load_config(path)).to_dict(), str(root / "search"))


def _fit(trainable_: Any, root: Path, stop: Any, param_space: dict | None = None) -> Any:
    tuner = tune.Tuner(
        trainable_,
        param_space=param_space or {},
        tune_config=tune.TuneConfig(reuse_actors=False, time_budget_s=TUNE_BUDGET_S),
        run_config=tune.RunConfig(
            name="tuner",
            storage_path=str(root),
            stop=stop,
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )
    return tuner.fit()


def _cpus() -> float:
    return float(ray.available_resources().get("CPU", 0.0))


def _all_cpus_free() -> float:
    """The cluster's CPUs, once every one is free (what an earlier test ran has let go)."""
    total = float(ray.cluster_resources()["CPU"])
    assert _within(30, lambda: _cpus() >= total - 1e-6), f"{_cpus()} of {total} CPUs free"
    return total


def _epochs_logged(plan: TrialPlan) -> list[float]:
    """The epochs the trials' runs logged themselves (rank 0's metrics.jsonl)."""
    records = [
        json.loads(line)
        for log in Path(plan.trials_dir).glob(f"*/{METRICS_FILE}")
        for line in log.read_text().splitlines()
        if line.endswith("}")  # not a line cut short by a kill
    ]
    return [r["epoch"] for r in records if r.get("event") == "epoch"]


def _train_groups(known: set[str]) -> dict[str, str]:
    """id -> state of the placement groups of Train workers (bundles of WORKER_CPUS) made
    since ``known``."""
    return {
        pg_id: entry["state"]
        for pg_id, entry in ray.util.placement_group_table().items()
        if pg_id not in known
        and entry["bundles"]
        and all(b == {"CPU": WORKER_CPUS} for b in entry["bundles"].values())
    }


def _within(deadline_s: float, condition: Callable[[], bool]) -> bool:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.2)
    return True


def _guards() -> list[str]:
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(GUARD_NAME)
    ]


def _assert_released(known: set[str], cpus: float) -> None:
    """Every Train group made since ``known`` is removed, the CPUs are back and the runs'
    guards are gone, within the deadline (a guard looks once a second)."""

    def released() -> bool:
        groups_removed = set(_train_groups(known).values()) <= {"REMOVED"}
        return groups_removed and _cpus() >= cpus - 1e-6 and not _guards()

    assert _within(RELEASE_DEADLINE_S, released), (
        f"after {RELEASE_DEADLINE_S:g} s: groups {_train_groups(known)}, "
        f"{_cpus()} of {cpus} CPUs free, guards {_guards()}"
    )


SPARE = "clinfo-test-spare-cpus"


class StarveThenStop(tune.stopper.Stopper):
    """Once the trial's run has reserved its worker, reserves (placement group ``SPARE``) all
    the other CPUs but 0.4, less than the one CPU a Ray Data task asks for: the worker starts
    its loop, then waits for data. Ends the experiment as soon as the worker is in its loop."""

    def __init__(self, trials: Path, known: set[str], cpus: float) -> None:
        self._trials, self._known, self._cpus = trials, known, cpus
        self._starving = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        if not self._starving and _train_groups(self._known):
            others = self._cpus - TRIAL_ACTOR_RESOURCES["CPU"] - WORKER_CPUS
            ray.util.placement_group([{"CPU": round(others - 0.4, 4)}], name=SPARE)
            self._starving = True
        return any(self._trials.glob(f"*/{PID_DIR}/rank0"))


def test_a_trial_stopped_before_its_first_report_frees_its_workers(
    shapes_dataset: Path, tmp_path: Path
) -> None:
    plan = _plan(shapes_dataset, tmp_path, cache="none")  # every epoch streams through Ray Data
    cpus, known = _all_cpus_free(), set(_train_groups(set()))
    try:
        _fit(make_trainable(plan), tmp_path, StarveThenStop(Path(plan.trials_dir), known, cpus))
        assert _train_groups(known), "the trial's run never reserved its workers"
    finally:
        if SPARE in {entry["name"] for entry in ray.util.placement_group_table().values()}:
            ray.util.remove_placement_group(ray.util.get_placement_group(SPARE))
    assert _epochs_logged(plan) == []  # stopped before its first report
    _assert_released(known, cpus)


# --- trials whose run gets one more Train callback --------------------------------------------


class RecordsItsStop(StopsItsTrainRun):
    """The trial's cleanup, with ``config["abort_timeout_s"]``: it creates
    ``<config["records"]>/<extra>.stopping`` as it starts, and writes what it raised to
    ``<extra>.txt`` ("" when it raised nothing)."""

    config: dict[str, Any]

    def setup(self, config: dict[str, Any]) -> None:
        self.abort_timeout_s = float(config["abort_timeout_s"])
        super().setup(config)  # type: ignore[misc]

    def cleanup(self) -> None:
        records, extra = Path(self.config["records"]), self.config["extra"]
        (records / f"{extra}.stopping").touch()
        try:
            super().cleanup()
        except Exception as err:
            (records / f"{extra}.txt").write_text("".join(traceback.format_exception(err)))
            raise
        (records / f"{extra}.txt").write_text("")


class HoldsTheController(ray.train.UserCallback):
    """Blocks the controller's event loop once it has handed Tune the first report (the
    trial's own callback comes first): the controller answers nothing any more."""

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        time.sleep(3600)


class FailsWhileStopping(ray.train.UserCallback):
    """Once the controller has handed Tune the first report, waits until the trial is being
    stopped, then raises: the run fails (the controller's event loop, held meanwhile, takes
    the trial's abort only once the run has ended)."""

    def __init__(self, records: Path) -> None:
        self._stopping = records / "fails.stopping"

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        _within(60, self._stopping.exists)
        raise ValueError(CRASH)


# extra -> the callback, made from the records' folder
EXTRA_CALLBACKS: dict[str, Callable[[Path], ray.train.UserCallback]] = {
    "holds": lambda records: HoldsTheController(),
    "fails": FailsWhileStopping,
}


def trial_with_extra_callback(config: dict[str, Any], plan: TrialPlan) -> None:
    """``run_trial``, its run given ``EXTRA_CALLBACKS[config["extra"]]`` (none for "none")
    after the trial's own: ``train`` patched in the trial's process only."""
    extra = EXTRA_CALLBACKS.get(config["extra"])
    added = [extra(Path(config["records"]))] if extra else []

    def train_with_extra(cfg: Any, *, callbacks: Any = ()) -> Any:
        return launch.train(cfg, callbacks=[*callbacks, *added])

    trainable.train = train_with_extra  # type: ignore[assignment]
    run_trial({}, plan)


trial_with_extra_callback.__mixins__ = (RecordsItsStop,)  # type: ignore[attr-defined]


def _fit_with_extra(plan: TrialPlan, root: Path, extra: str, abort_timeout_s: float) -> Any:
    """One trial, its run given the ``extra`` callback, stopped after its first report."""
    return _fit(
        tune.with_resources(
            tune.with_parameters(trial_with_extra_callback, plan=plan), TRIAL_ACTOR_RESOURCES
        ),
        root,
        stop={"training_iteration": 1},
        param_space={"extra": extra, "records": str(root), "abort_timeout_s": abort_timeout_s},
    )


def test_an_abort_that_times_out_kills_the_run_removes_its_group_and_raises(
    shapes_dataset: Path, tmp_path: Path
) -> None:
    plan = _plan(shapes_dataset, tmp_path, cache="worker")
    cpus, known = _all_cpus_free(), set(_train_groups(set()))
    results = _fit_with_extra(plan, tmp_path, "holds", abort_timeout_s=2.0)
    assert results[0].metrics.get("epoch") == 1  # stopped after its first report
    raised = (tmp_path / "holds.txt").read_text()
    assert "TrainRunStopError" in raised and "did not stop within 2 s of its abort" in raised
    assert "its controller was killed; placement groups removed: ['" in raised, raised
    assert "still held" not in raised
    _assert_released(known, cpus)


def test_a_crash_while_stopping_is_raised(shapes_dataset: Path, tmp_path: Path) -> None:
    plan = _plan(shapes_dataset, tmp_path, cache="worker")
    cpus, known = _all_cpus_free(), set(_train_groups(set()))
    results = _fit_with_extra(plan, tmp_path, "fails", abort_timeout_s=9.0)
    assert results[0].metrics.get("epoch") == 1  # stopped after its first report
    raised = (tmp_path / "fails.txt").read_text()
    assert f"ControllerError: Training failed due to controller error:\n{CRASH}" in raised, raised
    _assert_released(known, cpus)


def test_a_clean_stop_is_quiet(shapes_dataset: Path, tmp_path: Path) -> None:
    plan = _plan(shapes_dataset, tmp_path, cache="worker")
    cpus, known = _all_cpus_free(), set(_train_groups(set()))
    results = _fit_with_extra(plan, tmp_path, "none", abort_timeout_s=9.0)
    assert results[0].metrics.get("epoch") == 1  # stopped after its first report
    # the abort ended fit() with the controller's death, as expected: cleanup raised nothing
    assert (tmp_path / "none.txt").read_text() == ""
    _assert_released(known, cpus)
