"""Where the fixed cost of a training run goes: the phases of one ``clinfo-ray train`` run, timed.

    python benchmarks/startup_phases.py --config quickstart --set optim.epochs=3

Runs what ``clinfo-ray train`` runs, in this process, and prints each phase in seconds:

- ``imports``: importing the CLI and the training code (measured in a fresh interpreter);
- ``ray_start``: ``connect_ray`` (a local Ray started, as the CLI does);
- ``config_and_clusters``: the config, the checks before Ray and the cluster table;
- ``controller``: from ``fit()`` to the Train controller's start;
- ``worker_group``: from the controller's start to its worker group's start;
- ``first_epoch_start``: from the worker group's start to the first epoch's start (the workers
  build their model and read their data);
- ``epochs``: the epochs themselves (rank 0's ``train/epoch_seconds``, summed);
- ``between_epochs``: the rest of the time from the first epoch's start to the last epoch's
  report (evaluations, checkpoints, reports);
- ``finish``: from the last report to ``fit()``'s return (the workers' shutdown);
- ``ray_stop``: ``ray.shutdown()``.

The timestamps inside ``fit()`` come from a Ray Train controller callback (the controller's
start, its worker group's start) and from rank 0's ``metrics.jsonl`` (each epoch's record).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

PHASES = (
    "imports",
    "ray_start",
    "config_and_clusters",
    "controller",
    "worker_group",
    "first_epoch_start",
    "epochs",
    "between_epochs",
    "finish",
    "ray_stop",
)
OUTSIDE_EPOCHS = tuple(p for p in PHASES if p != "epochs")


class StampsPhases(ControllerCallback, WorkerGroupCallback):
    """Runs in the Train controller: appends ``{"phase": ..., "time": ...}`` lines to a file."""

    def __init__(self, path: str) -> None:
        self._path = path

    def _stamp(self, phase: str) -> None:
        with open(self._path, "a") as f:
            f.write(json.dumps({"phase": phase, "time": time.time()}) + "\n")

    def after_controller_start(self, train_run_context: Any) -> None:
        self._stamp("controller_started")

    def after_worker_group_start(self, worker_group: Any) -> None:
        self._stamp("worker_group_started")


def import_seconds() -> float:
    """Seconds a fresh interpreter takes to import the CLI and the training code."""
    code = (
        "import time; t = time.perf_counter(); "
        "import clinfo_ray.commands.main, clinfo_ray.training.launch, clinfo_ray.training.worker; "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def timed_run(config: str, overrides: list[str], root: Path) -> dict[str, float]:
    """One training run of ``config`` into ``root``; phase -> seconds."""
    import ray

    from clinfo_ray.commands.common import connect_ray
    from clinfo_ray.config import apply_overrides, load_config
    from clinfo_ray.training import launch
    from clinfo_ray.training.run_log import METRICS_FILE

    phases: dict[str, float] = {"imports": import_seconds()}
    stamps = root / "stamps.jsonl"
    cfg = apply_overrides(load_config(config, overrides), {"run.output_dir": str(root / "runs")})
    t = time.time()
    connect_ray(None, cpus_needed=cfg.run.num_workers * cfg.run.cpus_per_worker)
    phases["ray_start"] = time.time() - t

    t = time.time()
    fit_started: dict[str, float] = {}
    real_fit = launch._fit

    def fit_stamped(*args: Any, **kwargs: Any) -> Any:
        fit_started["time"] = time.time()
        return real_fit(*args, **kwargs)

    launch._fit = fit_stamped  # type: ignore[assignment]
    try:
        outcome = launch.train(cfg, callbacks=[StampsPhases(str(stamps))])
    finally:
        launch._fit = real_fit  # type: ignore[assignment]
    fit_returned = time.time()
    phases["config_and_clusters"] = fit_started["time"] - t

    marks = {r["phase"]: r["time"] for r in map(json.loads, stamps.read_text().splitlines())}
    metrics_lines = (outcome.run_dir / METRICS_FILE).read_text().splitlines()
    records = [json.loads(line) for line in metrics_lines]
    epochs = [r for r in records if r.get("event") == "epoch"]
    epoch_seconds = [float(r["train/epoch_seconds"]) for r in epochs]
    first_start = epochs[0]["time"] - epoch_seconds[0]
    phases["controller"] = marks["controller_started"] - fit_started["time"]
    phases["worker_group"] = marks["worker_group_started"] - marks["controller_started"]
    phases["first_epoch_start"] = first_start - marks["worker_group_started"]
    phases["epochs"] = sum(epoch_seconds)
    phases["between_epochs"] = epochs[-1]["time"] - first_start - phases["epochs"]
    phases["finish"] = fit_returned - epochs[-1]["time"]
    t = time.time()
    ray.shutdown()
    phases["ray_stop"] = time.time() - t
    return phases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        phases = timed_run(args.config, args.set, Path(tmp))
    outside = sum(phases[p] for p in OUTSIDE_EPOCHS)
    for phase in PHASES:
        print(f"{phase:>20s} {phases[phase]:7.2f} s")
    print(f"{'outside the epochs':>20s} {outside:7.2f} s (goal: <= 12 s)")
    print(f"{'total':>20s} {outside + phases['epochs']:7.2f} s")
    print(json.dumps({k: round(v, 3) for k, v in phases.items()}))


if __name__ == "__main__":
    main()
