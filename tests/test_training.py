"""End-to-end training on a session Ray: 2 workers, checkpoints that reload, logs, and resume
after a real worker process is killed."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray.train
import torch

from clinfo_ray.checkpointing import (
    CLUSTERS_FILE,
    load_checkpoint,
    load_model_from_checkpoint,
    read_checkpoint_state,
)
from clinfo_ray.clusters.assignment import clusters_by_index
from clinfo_ray.config import ConfigError, TrainConfig, apply_overrides, load_config
from clinfo_ray.config.loading import parse_set_overrides
from clinfo_ray.data import columns as C
from clinfo_ray.model import build_model
from clinfo_ray.training.launch import (
    CONTROLLER_POLL_SECONDS,
    CONTROLLER_POLL_VAR,
    check_before_ray,
    train,
    val_by_index,
)
from clinfo_ray.training.objective import TrainModule
from clinfo_ray.training.worker import PID_DIR
from tests.datasets import registered_epoch

pytestmark = [pytest.mark.ray, pytest.mark.slow]

QUICKSTART = Path(__file__).resolve().parents[1] / "clinfo_ray" / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def shapes(shapes_dataset: Path) -> Path:
    """The session's shapes dataset: 48 train + 12 test drawn shapes, labelled by shape, tagged
    by colour and shape."""
    return shapes_dataset


# loss methods whose clusters are fixed (clusters.method must be left out for them)
FIXED_CLUSTERS = ("simclr", "supcon", "clinfonce-kmeans", "pcl")


def _config(data: Path, out: Path, name: str, *extra: str) -> TrainConfig:
    """The quickstart, tiny; clinfonce and ce-clusters on the tag clusters (tags top-2)."""
    method = next((e.split("=", 1)[1] for e in extra if e.startswith("loss.method=")), None)
    tags = [] if method in FIXED_CLUSTERS else ["clusters.method=tags"]
    return load_config(
        QUICKSTART,
        [
            f"data.dataset_dir={data}",
            "data.image_size=16",
            "data.batch_size_per_worker=8",
            "model.cnn_width=8",
            *tags,
            "clusters.top_k=2",
            "optim.epochs=2",
            "optim.warmup_epochs=1",
            "eval.knn_every=1",
            "eval.knn_k=5",
            f"run.output_dir={out}",
            f"run.name={name}",
            "run.cpus_per_worker=0.5",
            *extra,
        ],
    )


def _records(run_dir: Path, event: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["event"] == event]


class RecordsTheControllerPoll(ray.train.UserCallback):
    """Writes, from the Train controller's process, its poll interval variable at each report."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        with self._path.open("a") as f:
            f.write(os.environ.get(CONTROLLER_POLL_VAR, "unset") + "\n")


def test_two_workers_train_log_and_checkpoint(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(shapes.parent)  # a relative dataset path, as a user types it
    cfg = _config(Path(shapes.name), tmp_path, "smoke", "run.device=auto")
    monkeypatch.delenv(CONTROLLER_POLL_VAR, raising=False)  # the default, as a user runs it
    polls = tmp_path / "controller_poll.txt"
    outcome = train(cfg, callbacks=[RecordsTheControllerPoll(polls)])
    # the controller polls its workers every 0.25 s (Ray's default, 2 s, added ~3 s a run)
    assert polls.read_text().splitlines() == [CONTROLLER_POLL_SECONDS] * 2
    assert outcome.metrics["epoch"] == 2.0
    assert 0.0 <= outcome.metrics["eval/knn_top1"] <= 1.0
    assert outcome.metrics["data/dropped_images"] == 0.0
    # tags top-2 over {colour, shape}: at most 4 clusters, and it must find more than one
    assert 1 < outcome.cluster_stats["num_clusters"] <= 4

    model, saved_cfg = load_model_from_checkpoint(outcome.checkpoint)
    assert saved_cfg.data.dataset_dir == str(shapes)  # resolved on the driver
    assert saved_cfg.run.device == "cpu"  # auto, resolved: the test's Ray has no GPU
    assert saved_cfg.model == cfg.model and saved_cfg.optim == cfg.optim
    state = read_checkpoint_state(outcome.checkpoint)
    steps = check_before_ray(cfg)  # training rows (train less validation) // 16
    assert steps == (48 - int(val_by_index(cfg).sum())) // 16 >= 2
    assert (state.epoch, state.step) == (2, 2 * steps)
    assert state.cluster_table_version == 0
    out = model(torch.rand(3, 3, 16, 16))
    assert out.projections.shape == (3, 128) and torch.isfinite(out.projections).all()

    epochs = _records(outcome.run_dir, "epoch")
    assert [r["epoch"] for r in epochs] == [1.0, 2.0]
    assert all(r["train/loss"] > 0 and r["train/input_seconds"] > 0 for r in epochs)
    # the quickstart's loss, Cl-InfoNCE, over 2 x 16 views: about log(31) at the start
    assert saved_cfg.loss.method == "clinfonce" and epochs[0]["train/loss"] > 1.0
    assert (
        _records(outcome.run_dir, "clusters")[0]["num_clusters"]
        == outcome.cluster_stats["num_clusters"]
    )
    events = EventAccumulator(str(outcome.run_dir / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [steps, 2 * steps]
    assert len(events.Scalars("eval/knn_top1")) == 2
    assert "clusters/mutual_information_bits" in events.Tags()["scalars"]


def test_iterative_kmeans_rebuilds_clusters_and_keeps_version(shapes: Path, tmp_path: Path) -> None:
    cfg = _config(
        shapes,
        tmp_path,
        "kmeans",
        "loss.method=clinfonce-kmeans",
        "clusters.k=4",
        "clusters.warmup_epochs=1",
        "optim.epochs=3",
        "eval.knn_every=0",
        "data.cache=none",  # the streamed input path: decoded and augmented in Ray Data
        "data.augment_on=ray_data",
    )
    outcome = train(cfg)
    assert outcome.cluster_stats is None  # instances for the warm-up epoch, then its own k-means
    losses = [r["train/loss"] for r in _records(outcome.run_dir, "epoch")]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses), losses
    rebuilds = _records(outcome.run_dir, "clusters")
    assert [r["version"] for r in rebuilds] == [1, 2]  # epochs 2 and 3, after 1 warm-up epoch
    assert all(1 <= r["num_clusters"] <= 4 for r in rebuilds)
    assert (outcome.run_dir / "clusters" / "kmeans-v0002.parquet").is_file()
    assert read_checkpoint_state(outcome.checkpoint).cluster_table_version == 2
    # the checkpoint holds the clusters the run trained on last: the published table's
    state = json.loads((outcome.checkpoint / "state.json").read_text())
    assert CLUSTERS_FILE in state["files"]
    saved = torch.load(outcome.checkpoint / CLUSTERS_FILE, weights_only=True)
    table = pq.read_table(outcome.run_dir / "clusters" / "kmeans-v0002.parquet").sort_by(C.ID)
    assert saved["version"] == 2  # the table's rows in id order are the train split's indices
    assert saved["assignment"].tolist() == table[C.CLUSTER].to_pylist()
    versions = [r["clusters/version"] for r in _records(outcome.run_dir, "epoch")]
    assert versions == [0.0, 1.0, 2.0]


# loss.method -> extra overrides; every method once on 2 workers, so none breaks silently
# (clinfonce: test_two_workers_train_log_and_checkpoint; clinfonce-kmeans, on the streamed
# path: test_iterative_kmeans_rebuilds_clusters_and_keeps_version)
METHODS = {
    "simclr": [],
    "supcon": [],
    "ce-clusters": [],
    # no warm-up: prototypes from epoch 1, rebuilt before epoch 2
    "pcl": [
        "loss.pcl_ks=[4,8]",
        "clusters.warmup_epochs=0",
        "clusters.recluster_every=1",
    ],
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_loss_method_trains_two_epochs_on_two_workers(
    shapes: Path, tmp_path: Path, method: str
) -> None:
    cfg = _config(shapes, tmp_path, method, f"loss.method={method}", *METHODS[method])
    outcome = train(cfg)
    epochs = _records(outcome.run_dir, "epoch")
    assert [r["epoch"] for r in epochs] == [1.0, 2.0] and outcome.metrics["epoch"] == 2.0
    losses = [r["train/loss"] for r in epochs]
    assert all(math.isfinite(x) and x > 0 for x in losses), losses
    assert 0.0 <= outcome.metrics["eval/knn_top1"] <= 1.0

    model, saved_cfg = load_model_from_checkpoint(outcome.checkpoint)
    assert saved_cfg.loss.method == method
    state = read_checkpoint_state(outcome.checkpoint)
    assert (state.epoch, state.step) == (2, 2 * check_before_ray(cfg))  # train less val rows
    assert torch.isfinite(model(torch.rand(3, 3, 16, 16)).features).all()

    if method == "pcl":
        _check_pcl_prototypes(outcome.run_dir, outcome.checkpoint, state.cluster_table_version)
    elif method in ("simclr", "supcon"):  # instances / the 2 shape labels of the tiny set
        expected = {"simclr": 48, "supcon": 2}[method]
        assert outcome.cluster_stats["num_clusters"] == expected
    if method == "ce-clusters":  # the paper's baseline: starts near log K (K tag clusters)
        table = str(outcome.run_dir / "clusters" / "tags.parquet")
        assignment = clusters_by_index(str(shapes), table)
        assert assignment is not None
        k = int(assignment.max()) + 1
        inner = TrainModule(build_model(saved_cfg.model), k)
        load_checkpoint(outcome.checkpoint, model=inner.model, loss_module=inner.classifier)
        assert inner.classifier is not None and inner.classifier.num_clusters == k >= 2
        logits = inner.eval()(torch.rand(2, 2, 3, 16, 16)).logits
        assert logits is not None and logits.shape == (2, 2, k) and torch.isfinite(logits).all()
        assert losses[0] < 2 * math.log(k)
    else:  # Cl-InfoNCE over 2 x 16 views: about log(31) at the start, far above 0
        assert losses[0] > 1.0


def _check_pcl_prototypes(run_dir: Path, checkpoint: Path, version: int) -> None:
    """PCL re-clustered before both epochs; its checkpoint holds the last prototypes."""
    assert version == 2
    rebuilds = _records(run_dir, "clusters")
    assert [r["version"] for r in rebuilds] == [1, 2]
    for r in rebuilds:  # the published table is the first granularity's (k = 4)
        sizes = r["prototype_clusters"]
        assert len(sizes) == 2 and sizes[0] == r["num_clusters"]
        assert 2 <= sizes[0] <= 4 and 2 <= sizes[1] <= 8
    assert [r["clusters/version"] for r in _records(run_dir, "epoch")] == [1.0, 2.0]
    saved = torch.load(checkpoint / CLUSTERS_FILE, weights_only=True)
    assert saved["version"] == 2 and saved["prototype_assignments"].shape == (2, 48)
    assert [tuple(c.shape) for c in saved["centroids"]] == [(k, 128) for k in sizes]
    for c, phi in zip(saved["centroids"], saved["concentrations"], strict=True):
        torch.testing.assert_close(c.norm(dim=1), torch.ones(c.shape[0]))
        assert float(phi.mean()) == pytest.approx(0.1, rel=1e-5) and bool((phi > 0).all())


def _worker_pid(run_dir: Path, rank: int) -> int:
    """The pid the rank's worker of the current attempt recorded (worker.py ``_record_pid``)."""
    return int(json.loads((run_dir / PID_DIR / f"rank{rank}").read_text())["pid"])


def _kill_a_worker_after_epoch(run_dir: Path, epoch: int, killed: list[int]) -> None:
    """SIGKILL the rank-1 worker process once the checkpoint of ``epoch`` is registered."""
    deadline = time.time() + 300
    while time.time() < deadline:
        registered = registered_epoch(run_dir)
        if registered >= epoch:
            pid = _worker_pid(run_dir, 1)
            os.kill(pid, signal.SIGKILL)
            killed.extend([pid, registered])
            return
        time.sleep(0.02)


def test_killed_worker_resumes_from_checkpoint(shapes: Path, tmp_path: Path) -> None:
    cfg = _config(
        shapes, tmp_path, "faulty", "optim.epochs=8", "run.max_failures=2", "eval.knn_every=0"
    )
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_a_worker_after_epoch, args=(tmp_path / "faulty", 2, killed), daemon=True
    )
    killer.start()
    outcome = train(cfg)
    killer.join(timeout=5)
    assert killed, "the test never killed a worker"
    pid, registered = killed
    assert outcome.metrics["epoch"] == 8.0
    # Resumed from the newest registered checkpoint (or a later one, reported meanwhile).
    resumes = _records(outcome.run_dir, "resume")
    assert len(resumes) == 1 and resumes[0]["after_epoch"] >= registered >= 2
    assert _worker_pid(outcome.run_dir, 1) != pid
    epochs = [r["epoch"] for r in _records(outcome.run_dir, "epoch")]
    assert epochs[-1] == 8.0 and 1.0 not in epochs[epochs.index(float(registered)) :]
    state = read_checkpoint_state(outcome.checkpoint)
    assert (state.epoch, state.step) == (8, 8 * check_before_ray(cfg))


def test_same_run_name_resumes_instead_of_starting_over(shapes: Path, tmp_path: Path) -> None:
    cached = ("eval.knn_every=0", "data.cache=object_store")  # streamed from the object store
    first = train(_config(shapes, tmp_path, "again", *cached))
    assert first.metrics["epoch"] == 2.0
    # The same run, now asked for 3 epochs: it continues after epoch 2.
    second = train(_config(shapes, tmp_path, "again", *cached, "optim.epochs=3"))
    assert second.metrics["epoch"] == 3.0
    assert [r["epoch"] for r in _records(second.run_dir, "epoch")] == [1.0, 2.0, 3.0]
    assert [r["after_epoch"] for r in _records(second.run_dir, "resume")] == [2]


def test_bad_config_fails_before_ray_naming_the_key(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.batch_size_per_worker"):
        check_before_ray(_config(shapes, tmp_path, "big", "data.batch_size_per_worker=64"))
    with pytest.raises(ConfigError, match=r"data\.dataset_dir"):
        check_before_ray(_config(tmp_path / "nowhere", tmp_path, "none"))


@pytest.mark.parametrize("path", ["worker", "streamed"])
def test_the_same_seed_repeats_the_loss_curve(shapes: Path, tmp_path: Path, path: str) -> None:
    """Every random draw comes from run.seed: two runs on 2 workers give the same loss curve
    (to the last digit from worker memory, within float tolerance streamed); another seed
    gives another curve (shown once, from worker memory)."""
    streamed = ["data.cache=none", "data.augment_on=ray_data"] if path == "streamed" else []
    curves = []
    runs = [("a", 0), ("b", 0), ("c", 1)] if path == "worker" else [("a", 0), ("b", 0)]
    for name, seed in runs:
        cfg = _config(
            shapes, tmp_path, name, f"run.seed={seed}", "optim.epochs=3", "eval.knn_every=0"
        )
        outcome = train(apply_overrides(cfg, parse_set_overrides(streamed)))
        curves.append([r["train/loss"] for r in _records(outcome.run_dir, "epoch")])
    assert len(curves[0]) == 3
    if path == "worker":
        assert curves[1] == curves[0]
        assert curves[2] != pytest.approx(curves[0], rel=1e-3)
    else:
        assert curves[1] == pytest.approx(curves[0], rel=1e-6, abs=0)
