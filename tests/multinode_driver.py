"""Train on a Ray cluster of several nodes, all on this machine, and report what happened as JSON:
the driver of tests/test_multinode.py, run in a process of its own (the test process already
holds the session's Ray, and a process joins one Ray cluster at most).

    python tests/multinode_driver.py --dataset DIR --out DIR --result FILE \\
        [--scenarios two-nodes,node-lost] [--epochs 6] [--bucket URI]

The cluster (``ray.cluster_utils.Cluster``): a head node of 1 logical CPU (this driver, Ray
Train's controller and Ray Data's tasks; too small for a Train worker) and two worker nodes of 2
CPUs each. A Train worker asks for ``run.cpus_per_worker`` 1.5, so a worker node holds exactly
one: the two ranks run on different nodes (Ray Train packs its workers onto as few nodes as
fit, so a node with room for both would take both). Storage (``run.output_dir``) is one local
folder, which every node sees: they share this machine's file system, as the nodes of a real
cluster share NFS. With ``--bucket URI`` the ``node-lost`` scenario shares nothing but the
bucket instead: its dataset is read from ``URI/dataset`` (uploaded by the caller) and its run
(checkpoints, logs, the workers' records) is written to ``URI/runs``; the driver works from an
empty folder of its own and nothing of the run is written on this machine's disk.

Scenarios, run one after the other on the same cluster, each a run of its own name:

- ``two-nodes``: train ``--epochs`` epochs.
- ``node-lost``: once Ray Train has registered the checkpoint of epoch 1, kill every process of
  the worker node that holds rank 0 (SIGKILL, no graceful shutdown: a node lost, not drained),
  then add a fresh worker node of the same size. ``run.max_failures`` 2 lets the run restart its
  worker group, on the surviving node and the fresh one, from its last checkpoint.

Every Ray process started here lives under a temporary folder of its own (``RAY_TMPDIR``), so
the cluster's address file and logs never meet another Ray on this machine; the cluster is shut
down and the folder removed before the driver exits (``--keep-ray-logs`` keeps the folder). The
environment passes through (``RAY_AUTH_MODE`` and any token with it): the nodes and the driver
read the same one. Under ``RAY_AUTH_MODE=token`` with no token set up, the driver makes one
for its private cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "clinfo_ray" / "configs" / "quickstart.yaml"

HEAD_CPUS = 1  # the driver, the Train controller (0 CPU) and Ray Data's tasks (1 CPU each)
WORKER_NODE_CPUS = 2  # room for one Train worker at CPUS_PER_WORKER, never two
CPUS_PER_WORKER = 1.5
OBJECT_STORE_BYTES = 200 * 2**20  # per node; the tiny dataset needs a few MiB
# A killed node is declared dead after about period x threshold (Ray's default: 3 s x 5).
FAST_NODE_DEATH = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
NODE_START_TIMEOUT_S = 120.0
SCENARIOS = ("two-nodes", "node-lost")
LOSE_AFTER_EPOCH = 1


def tiny_overrides(dataset: object, out: object, name: str, epochs: int) -> list[str]:
    """The quickstart cut down for 2 cores: 16-px views of the shapes dataset, a 4-wide CNN,
    8 images per worker, the split in worker memory (the exactly repeatable input path), no
    online kNN. The test's single-node reference run uses the same list."""
    return [
        f"data.dataset_dir={dataset}",
        "data.image_size=16",
        "data.batch_size_per_worker=8",
        "data.cache=worker",
        "model.backbone=small_cnn",
        "model.cnn_width=4",
        "loss.method=clinfonce",
        "clusters.method=tags",
        "clusters.top_k=2",
        f"optim.epochs={epochs}",
        "optim.warmup_epochs=1",
        "eval.knn_every=0",
        f"run.output_dir={out}",
        f"run.name={name}",
        "run.num_workers=2",
        "run.device=cpu",
        f"run.cpus_per_worker={CPUS_PER_WORKER}",
        "run.max_failures=2",
        "run.seed=0",
    ]


def worker_records(run_dir: str) -> dict[str, dict[str, Any]]:
    """``rank0`` / ``rank1`` -> {"pid", "node_id"} of the current attempt's workers (a local
    run folder or one in a bucket)."""
    from clinfo_ray.storage import location as loc
    from clinfo_ray.training.worker import PID_DIR

    folder = loc.join(run_dir, PID_DIR)
    if not loc.is_dir(folder):
        return {}
    names = sorted(n for n in loc.list_names(folder) if n.startswith("rank"))
    return {name: json.loads(loc.read_text(loc.join(folder, name))) for name in names}


def _say(message: str) -> None:
    print(f"[multinode_driver {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _node_id(node: Any) -> str:
    return str(node.node_id)


def _add_worker_node(cluster: Any) -> Any:
    """A worker node of WORKER_NODE_CPUS, without Cluster's 30 s wait (too short on a loaded
    2-core machine): the caller waits with ``cluster.wait_for_nodes``."""
    return cluster.add_node(
        wait=False, num_cpus=WORKER_NODE_CPUS, object_store_memory=OBJECT_STORE_BYTES
    )


class Training(threading.Thread):
    """``train(cfg)`` off the main thread: Ray starts a node only from the main thread (it
    installs signal handlers there), and the main thread adds the fresh node while this trains."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(daemon=True)
        self.cfg = cfg
        self.outcome: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from clinfo_ray.training.launch import train

        try:
            self.outcome = train(self.cfg)
        except BaseException as err:  # re-raised on the main thread
            self.error = err


def lose_a_node(cluster: Any, run_dir: str, training: Training, timeout_s: float) -> dict:
    """Once the checkpoint of LOSE_AFTER_EPOCH is registered, kill every process of the worker
    node that holds rank 0, then add a fresh worker node of the same size. Returns what it did."""
    deadline = time.monotonic() + timeout_s
    from tests.datasets import registered_epoch  # the repo is on sys.path (main)

    while registered_epoch(run_dir) < LOSE_AFTER_EPOCH:
        if not training.is_alive():
            raise RuntimeError("the run ended before a checkpoint was registered")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no checkpoint of epoch {LOSE_AFTER_EPOCH} registered")
        time.sleep(0.02)
    before = worker_records(run_dir)
    by_id = {_node_id(n): n for n in cluster.worker_nodes}
    victim = by_id[before["rank0"]["node_id"]]  # KeyError: rank 0 is not on a worker node
    report: dict[str, Any] = {
        "registered_epoch": registered_epoch(run_dir),
        "workers_before": before,
        "removed_node": _node_id(victim),
        "training_when_removed": training.is_alive(),  # False: the run ended first
    }
    _say(f"killing node {report['removed_node']} (rank 0's)")
    started = time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    fresh = _add_worker_node(cluster)
    cluster.wait_for_nodes(timeout=NODE_START_TIMEOUT_S)  # also: the killed one marked dead
    report["added_node"] = _node_id(fresh)
    report["replace_s"] = round(time.monotonic() - started, 2)
    _say(f"added node {report['added_node']}")
    return report


def run_one(cluster: Any, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    """One training run of ``scenario`` on the connected cluster; its report."""
    import ray

    from clinfo_ray.checkpointing import read_checkpoint_state
    from clinfo_ray.config import load_config
    from clinfo_ray.storage import location as loc
    from clinfo_ray.training.launch import check_before_ray

    dataset, out = args.dataset, Path(args.out).resolve()
    if scenario == "node-lost" and args.bucket:  # nothing shared but the bucket
        dataset, out = loc.join(args.bucket, "dataset"), loc.join(args.bucket, "runs")
    cfg = load_config(QUICKSTART, tiny_overrides(dataset, out, scenario, args.epochs))
    run_dir = loc.join(out, scenario)
    report: dict[str, Any] = {}
    training = Training(cfg)
    started = time.monotonic()
    training.start()
    if scenario == "node-lost":
        report["node_loss"] = lose_a_node(cluster, run_dir, training, args.timeout)
    training.join(timeout=max(1.0, args.timeout - (time.monotonic() - started)))
    if training.is_alive():
        raise TimeoutError(f"{scenario}: the run still trains after {args.timeout:.0f} s")
    if training.error is not None:
        raise training.error
    outcome = training.outcome
    state = read_checkpoint_state(outcome.checkpoint_uri)
    report.update(
        train_s=round(time.monotonic() - started, 2),
        run_dir=str(run_dir),
        storage=cfg.run.output_dir,
        steps_per_epoch=check_before_ray(cfg),
        final_epoch=state.epoch,
        final_step=state.step,
        workers_after=worker_records(run_dir),
        nodes_alive=sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
    )
    return report


def run_scenarios(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Start the cluster, run every scenario on it (filling ``result``), shut it down."""
    import ray
    from ray.cluster_utils import Cluster

    from clinfo_ray.commands.common import connect_ray

    started = time.monotonic()
    cluster = Cluster()
    try:
        cluster.add_node(
            wait=False,
            num_cpus=HEAD_CPUS,
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
            _system_config=FAST_NODE_DEATH,
        )
        for _ in range(2):
            _add_worker_node(cluster)
        cluster.wait_for_nodes(timeout=NODE_START_TIMEOUT_S)
        connect_ray(cluster.address)
        result.update(
            head_node=_node_id(cluster.head_node),
            worker_nodes=sorted(_node_id(n) for n in cluster.worker_nodes),
            cluster_start_s=round(time.monotonic() - started, 2),
        )
        for scenario in args.scenarios:
            _say(f"{scenario}: training")
            result["runs"][scenario] = run_one(cluster, scenario, args)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _token_for_a_private_cluster() -> None:
    """Under ``RAY_AUTH_MODE=token`` with no token anywhere Ray looks (``RAY_AUTH_TOKEN``, the
    file ``RAY_AUTH_TOKEN_PATH`` names, ``~/.ray/auth_token``), give this driver's cluster a
    fresh one: the nodes it starts inherit this process's environment. A token already set
    up is used as it is; with authentication disabled nothing changes."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if (Path.home() / ".ray" / "auth_token").is_file():
        return
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _scenarios(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are {', '.join(SCENARIOS)}: got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a prepared dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="run.output_dir (shared storage)")
    parser.add_argument("--result", type=Path, required=True, help="the JSON report to write")
    parser.add_argument("--scenarios", type=_scenarios, default=list(SCENARIOS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--bucket", help="node-lost shares only this bucket (URI/dataset, /runs)")
    parser.add_argument("--keep-ray-logs", action="store_true", help="keep RAY_TMPDIR")
    args = parser.parse_args(argv)

    # Before Ray starts: its session folder, address file and sockets go here (a short path:
    # Unix socket names are limited to 107 bytes).
    private = tempfile.mkdtemp(prefix="clmn-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = private
    _token_for_a_private_cluster()
    result: dict[str, Any] = {"runs": {}, "ray_tmpdir": private}
    status = 0
    try:
        run_scenarios(args, result)
    except Exception:
        result["error"] = traceback.format_exc()
        status = 1
    finally:
        if not args.keep_ray_logs:
            shutil.rmtree(private, ignore_errors=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    _say(f"report: {args.result}" + (f"\n{result['error']}" if status else ""))
    return status


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # `python tests/multinode_driver.py` from any directory
    sys.exit(main())
