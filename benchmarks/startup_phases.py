"""Where the fixed cost of a training run goes: the phases of one ``clinfo-ray train`` run, timed.

    python benchmarks/startup_phases.py --config quickstart --set optim.epochs=3 \
        --set optim.warmup_epochs=1 --baseline eaca152 --revision HEAD --rounds 2

Runs what ``clinfo-ray train`` runs, in a fresh process per run, and prints each phase in
seconds (the median over ``--rounds`` runs):

- ``imports``: importing the CLI and the training code (in the run's process, first);
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

``--floor``: Ray's own fixed cost, for scale: start a local Ray as the CLI does, fit a
TorchTrainer of 2 workers (0.5 CPU each) whose loop only reports once, stop Ray.

``--baseline REV``: the same runs of the code at git revision ``REV`` (a temporary worktree,
run in its folder, whose ``data`` links to this checkout's), alternated with
the runs of this checkout (or of ``--revision REV``, a worktree too: files edited meanwhile do
not change it), so both columns come from one invocation under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
REPO = Path(__file__).resolve().parents[1]


def stamps_callback(path: str) -> Any:
    """A Ray Train callback that runs in the Train controller and appends ``{"phase": ...,
    "time": ...}`` lines to ``path`` (defined here: Ray is imported after the imports' timing)."""
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    class StampsPhases(ControllerCallback, WorkerGroupCallback):
        def __init__(self, path: str) -> None:
            self._path = path

        def _stamp(self, phase: str) -> None:
            import clinfo_ray  # where Ray's processes import it from (checked by the driver)

            code = str(Path(clinfo_ray.__file__).parents[1])
            with open(self._path, "a") as f:
                f.write(json.dumps({"phase": phase, "time": time.time(), "code": code}) + "\n")

        def after_controller_start(self, train_run_context: Any) -> None:
            self._stamp("controller_started")

        def after_worker_group_start(self, worker_group: Any) -> None:
            self._stamp("worker_group_started")

    return StampsPhases(path)


def timed_run(config: str, overrides: list[str], root: Path) -> dict[str, float]:
    """One training run of ``config`` into ``root``, in this fresh process; phase -> seconds."""
    t = time.time()
    import clinfo_ray.commands.main  # what the CLI imports first
    import clinfo_ray.training.worker  # what launch.train imports
    from clinfo_ray.training import launch

    phases: dict[str, float] = {"imports": time.time() - t}
    import ray

    from clinfo_ray.commands.common import connect_ray
    from clinfo_ray.config import apply_overrides, load_config
    from clinfo_ray.training.run_log import METRICS_FILE

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
        outcome = launch.train(cfg, callbacks=[stamps_callback(str(stamps))])
    finally:
        launch._fit = real_fit  # type: ignore[assignment]
    fit_returned = time.time()
    phases["config_and_clusters"] = fit_started["time"] - t

    stamped = [json.loads(line) for line in stamps.read_text().splitlines()]
    marks = {r["phase"]: r["time"] for r in stamped}
    import clinfo_ray

    here = str(Path(clinfo_ray.__file__).parents[1])
    if {r["code"] for r in stamped} != {here}:
        raise RuntimeError(f"Ray's processes imported clinfo_ray from elsewhere than {here}")
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


def floor_run(cpus_per_worker: float, workers: int) -> dict[str, float]:
    """Ray's own floor, in this fresh process: a local Ray started as the CLI starts it, then a
    TorchTrainer of ``workers`` workers whose loop only reports once (no data, no model)."""
    t = time.time()
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from clinfo_ray.commands.common import connect_ray

    phases = {"imports": time.time() - t}
    t = time.time()
    connect_ray(None, cpus_needed=workers * cpus_per_worker)
    phases["ray_start"] = time.time() - t

    def loop(config: dict[str, Any]) -> None:
        ray.train.report({"done": 1.0})

    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        TorchTrainer(
            loop,
            scaling_config=ray.train.ScalingConfig(
                num_workers=workers, resources_per_worker={"CPU": cpus_per_worker}
            ),
            run_config=ray.train.RunConfig(name="floor", storage_path=tmp),
        ).fit()
        phases["fit"] = time.time() - t
    t = time.time()
    ray.shutdown()
    phases["ray_stop"] = time.time() - t
    return phases


def run_in_fresh_process(config: str, overrides: list[str], code: Path | None) -> dict[str, float]:
    """One :func:`timed_run` in a new interpreter, importing clinfo_ray from ``code`` (a
    checkout; None: this one), in that checkout's folder (its ``data`` is this one's)."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    args = [sys.executable, __file__, "--one", "--config", config]
    args += [f"--set={item}" for item in overrides]
    # in the code's own folder: Ray's workers import from the driver's working directory first
    out = subprocess.run(args, cwd=code or REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"a timed run failed ({code or REPO}):\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(result["code"]) != (code or REPO).resolve():
        raise RuntimeError(f"the run imported clinfo_ray from {result['code']}, not {code}")
    return result["phases"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--baseline", metavar="REV", help="also time the code at this revision")
    parser.add_argument(
        "--revision", metavar="REV", help="time the code at this revision (default: the files here)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each code (median)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="time only Ray's floor: a trivial 2-worker TorchTrainer (0.5 CPU each) per round",
    )
    args = parser.parse_args(argv)
    if args.floor:
        for _ in range(args.rounds):  # each in a fresh process, as a command runs
            code = (
                "import json, sys; sys.path.insert(0, sys.argv[1]); "
                "from startup_phases import floor_run; print(json.dumps(floor_run(0.5, 2)))"
            )
            out = subprocess.run(
                [sys.executable, "-c", code, str(Path(__file__).parent)],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            floor = json.loads(out.stdout.strip().splitlines()[-1])
            total = sum(floor.values())
            print(json.dumps({"floor": {k: round(v, 3) for k, v in floor.items()}, "total": total}))
        return
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            phases = timed_run(args.config, args.set, Path(tmp))
        import clinfo_ray

        print(json.dumps({"code": str(Path(clinfo_ray.__file__).parents[1]), "phases": phases}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        git = ["git", "-C", str(REPO)]
        codes: dict[str, Path | None] = {}
        for name, revision in (("revision", args.revision), ("baseline", args.baseline)):
            if revision is None:
                if name == "revision":
                    codes["this checkout"] = None
                continue
            tree = Path(tmp) / name
            add = [*git, "worktree", "add", "--detach", str(tree), revision]
            subprocess.run(add, check=True, capture_output=True)
            (tree / "data").symlink_to(REPO / "data")  # this checkout's prepared datasets
            codes[f"at {revision}"] = tree
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in codes}
        try:
            for _ in range(args.rounds):
                for name, code in codes.items():  # alternated: both under the same load
                    runs[name].append(run_in_fresh_process(args.config, args.set, code))
        finally:
            for code in codes.values():
                if code is not None:
                    remove = [*git, "worktree", "remove", "--force", str(code)]
                    subprocess.run(remove, check=False)
    print_table(runs)


def print_table(runs: dict[str, list[dict[str, float]]]) -> None:
    """Each phase's median per code, the time outside the epochs against its goal, and the raw
    runs as JSON (one line per code)."""
    medians = {
        name: {p: statistics.median(r[p] for r in rs) for p in PHASES} for name, rs in runs.items()
    }
    print(f"{'phase (s, median)':>20s}" + "".join(f"{name:>16s}" for name in medians))
    for phase in PHASES:
        print(f"{phase:>20s}" + "".join(f"{m[phase]:16.2f}" for m in medians.values()))
    outside = {name: sum(m[p] for p in OUTSIDE_EPOCHS) for name, m in medians.items()}
    print(
        f"{'outside the epochs':>20s}"
        + "".join(f"{v:16.2f}" for v in outside.values())
        + "   (goal: <= 12 s)"
    )
    for name, rs in runs.items():
        print(
            json.dumps({"code": name, "runs": [{k: round(v, 3) for k, v in r.items()} for r in rs]})
        )


if __name__ == "__main__":
    main()
