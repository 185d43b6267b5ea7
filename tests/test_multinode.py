"""Training across Ray nodes, on this one machine: a cluster of a head and two worker nodes
(``ray.cluster_utils.Cluster``) built by tests/multinode_driver.py in a process of its own.

- two nodes: one Train worker per node, checkpoints and logs in one folder every node sees, and
  the loss curve of a single-node run of the same config and seed;
- a node lost mid-run, the nodes sharing nothing but a bucket (the session's S3 server on
  loopback: the dataset read from it, checkpoints, logs and the workers' records written to it,
  no run folder on disk): the node holding rank 0 is killed after the first checkpoint and a
  fresh node joins; the run restarts its workers from the last checkpoint in the bucket and
  finishes every epoch with no step lost, still on the single-node curve.

The single-node reference runs here, on the session's Ray (4 CPUs: both workers at 1.5 CPUs,
one CPU left for Ray Data), with the driver's config.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clinfo_ray.config import load_config
from clinfo_ray.storage import location as loc
from clinfo_ray.training.launch import train
from tests.multinode_driver import LOSE_AFTER_EPOCH, QUICKSTART, tiny_overrides

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 6  # the node is lost after epoch 1: enough epochs left that the run is still training
DRIVER = Path(__file__).with_name("multinode_driver.py")
DRIVER_TIMEOUT_S = 600
LOSS_TOLERANCE = 1e-6  # relative; the split in worker memory repeats a curve to the last digit


def _rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl of a run folder, local or in the bucket."""
    text = loc.read_text(loc.join(run_dir, "metrics.jsonl"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _records(run_dir: str | Path, event: str) -> list[dict[str, Any]]:
    return [r for r in _rows(run_dir) if r["event"] == event]


def _curve(run_dir: str | Path) -> dict[int, float]:
    """epoch -> loss; an epoch trained twice (before and after a restart) counts its last."""
    return {int(r["epoch"]): r["train/loss"] for r in _records(run_dir, "epoch")}


def _run_driver(dataset: Path, out: Path, bucket: str) -> dict[str, Any]:
    """Both scenarios on one cluster, node-lost in ``bucket``; the driver's report. Its output
    goes to ``driver.log``."""
    result, log = out / "result.json", out / "driver.log"
    command = [sys.executable, str(DRIVER), "--dataset", str(dataset), "--out", str(out)]
    command += ["--result", str(result), "--epochs", str(EPOCHS), "--bucket", bucket]
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, cwd=DRIVER.parents[1], env=dict(os.environ), stdout=sink, stderr=sink
        )
        try:
            process.wait(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)  # Ray's handler stops the cluster's processes
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    if not result.is_file():
        pytest.fail(f"the driver wrote no report (exit {process.returncode}):\n{tail}")
    report = json.loads(result.read_text())
    if "error" in report:
        pytest.fail(f"the driver failed:\n{report['error']}\n--- driver.log ---\n{tail}")
    return report


@pytest.fixture(scope="module")
def cluster_runs(
    shapes_dataset: Path, s3_bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """The driver's report; node-lost's dataset is uploaded to a folder of the bucket first."""
    out = tmp_path_factory.mktemp("multinode")
    bucket = f"{s3_bucket}/multinode-{secrets.token_hex(4)}"
    loc.upload_dir(shapes_dataset, loc.join(bucket, "dataset"))
    report = _run_driver(shapes_dataset, out, bucket)
    report["local_out"], report["bucket"] = str(out), bucket
    return report


@pytest.fixture(scope="module")
def single_node_curve(shapes_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("single_node")
    outcome = train(load_config(QUICKSTART, tiny_overrides(shapes_dataset, out, "one", EPOCHS)))
    assert outcome.metrics["epoch"] == EPOCHS
    return _curve(outcome.run_dir)


def test_two_nodes_train_one_worker_each_on_the_single_node_curve(
    cluster_runs: dict, single_node_curve: dict
) -> None:
    run = cluster_runs["runs"]["two-nodes"]
    workers = run["workers_after"]
    nodes = {rank: w["node_id"] for rank, w in workers.items()}
    assert sorted(nodes) == ["rank0", "rank1"]
    assert nodes["rank0"] != nodes["rank1"], workers
    assert set(nodes.values()) == set(cluster_runs["worker_nodes"])  # not the 1-CPU head

    run_dir = Path(run["run_dir"])
    steps = run["steps_per_epoch"]
    assert steps >= 2 and (run["final_epoch"], run["final_step"]) == (EPOCHS, EPOCHS * steps)
    # rank 0's node wrote the logs and checkpoints into the folder every node shares
    assert (run_dir / f"checkpoint_epoch{EPOCHS:04d}" / "state.json").is_file()
    epochs = _records(run_dir, "epoch")
    assert [(r["epoch"], r["step"]) for r in epochs] == [
        (float(e), float(e * steps)) for e in range(1, EPOCHS + 1)
    ]
    assert not _records(run_dir, "resume")

    curve = _curve(run_dir)
    assert sorted(curve) == sorted(single_node_curve) == list(range(1, EPOCHS + 1))
    assert [curve[e] for e in sorted(curve)] == pytest.approx(
        [single_node_curve[e] for e in sorted(curve)], rel=LOSS_TOLERANCE, abs=0
    )


def test_lost_node_resumes_from_the_bucket_on_a_fresh_node(
    cluster_runs: dict, single_node_curve: dict
) -> None:
    run = cluster_runs["runs"]["node-lost"]
    loss = run["node_loss"]
    before = {rank: w["node_id"] for rank, w in loss["workers_before"].items()}
    removed, added = loss["removed_node"], loss["added_node"]
    # the first attempt ran one worker per worker node; rank 0's node was killed mid-run
    assert before["rank0"] == removed != before["rank1"]
    assert set(before.values()) == set(cluster_runs["worker_nodes"])
    assert loss["training_when_removed"], "the run ended before its node was lost"
    assert loss["registered_epoch"] >= LOSE_AFTER_EPOCH

    # the restarted workers: on the surviving node and the fresh one, new processes
    after = run["workers_after"]
    assert {w["node_id"] for w in after.values()} == {before["rank1"], added}
    old_pids = {w["pid"] for w in loss["workers_before"].values()}
    assert not old_pids & {w["pid"] for w in after.values()}
    assert removed not in run["nodes_alive"] and added in run["nodes_alive"]

    # resumed once, from a registered checkpoint; no step lost or counted twice
    # nothing shared but the bucket: the run's folder is there, none was written on disk
    run_dir = run["run_dir"]
    assert (
        run_dir
        == loc.join(cluster_runs["bucket"], "runs", "node-lost")
        == (run["storage"] + "/node-lost")
    )
    assert loc.is_file(loc.join(run_dir, f"checkpoint_epoch{EPOCHS:04d}", "state.json"))
    assert not (Path(cluster_runs["local_out"]) / "node-lost").exists()
    steps = run["steps_per_epoch"]
    assert (run["final_epoch"], run["final_step"]) == (EPOCHS, EPOCHS * steps)
    resumes = _records(run_dir, "resume")
    assert len(resumes) == 1, resumes
    resumed_after = resumes[0]["after_epoch"]
    assert LOSE_AFTER_EPOCH <= loss["registered_epoch"] <= resumed_after < EPOCHS
    assert resumes[0]["step"] == resumed_after * steps
    rows = _rows(run_dir)
    at = next(i for i, r in enumerate(rows) if r["event"] == "resume")
    after_resume = [r for r in rows[at:] if r["event"] == "epoch"]
    assert [r["epoch"] for r in after_resume] == [
        float(e) for e in range(resumed_after + 1, EPOCHS + 1)
    ]
    epochs = _records(run_dir, "epoch")
    assert all(r["step"] == r["epoch"] * steps for r in epochs)
    assert {int(r["epoch"]) for r in epochs} == set(range(1, EPOCHS + 1))

    # restored model, optimiser, schedule and data order: still the single-node curve
    curve = _curve(run_dir)
    assert [curve[e] for e in sorted(curve)] == pytest.approx(
        [single_node_curve[e] for e in sorted(curve)], rel=LOSS_TOLERANCE, abs=0
    )
