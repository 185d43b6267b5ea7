"""The per-worker training loop: build the state (restored from Ray Train's checkpoint), then for
each epoch re-cluster when due, train, evaluate when due, and report."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import nn

from clinfo_ray.checkpointing import load_checkpoint, save_checkpoint
from clinfo_ray.clusters.assignment import clusters_by_index
from clinfo_ray.config import TrainConfig
from clinfo_ray.data.read.drop_counter import DROPPED_METRIC, DropCounter
from clinfo_ray.data.read.stream import INDEX, StreamPlan
from clinfo_ray.distributed import mean_over_ranks, rank, world_size
from clinfo_ray.evaluation.knn import knn_top1
from clinfo_ray.model import build_model, maybe_compile
from clinfo_ray.optim import build_optimizer
from clinfo_ray.storage import location as loc
from clinfo_ray.training.cluster_state import (
    ClusterState,
    kmeans_assignment,
    prototype_kmeans,
    publish,
)
from clinfo_ray.training.embedding import SplitEmbedding, embed_split
from clinfo_ray.training.objective import (
    PROTOTYPE_IDS,
    TrainModule,
    train_module,
    train_step,
)
from clinfo_ray.training.run_log import RunLog
from clinfo_ray.training.split_sources import BatchSource, WholeTrainSplit

log = logging.getLogger(__name__)

PID_DIR = ".worker_pids"  # rank{r}: JSON {"pid", "node_id"} of the current attempt (ops, tests)
LOOP_INPUTS = "inputs"  # the key of the LoopInputs in train_loop_config


@dataclass(frozen=True)
class LoopInputs:
    """What the driver hands every worker, as ``train_loop_config={LOOP_INPUTS: inputs}``."""

    config: dict[str, Any]  # TrainConfig.to_dict(): paths absolute, data.decode_size resolved
    table: str | None  # the starting id -> cluster table (Parquet); None: instance clusters
    table_stats: dict[str, Any] | None  # its statistics, logged before the first epoch
    steps_per_epoch: int
    run_dir: str
    drops: DropCounter | None  # counts the images the stream could not decode
    stream: StreamPlan  # the training rows (data.cache 'worker': each worker reads them whole)
    val: np.ndarray  # (n_train,) bool by index: the validation rows (never train; kNN queries)
    # the whole train split, unaugmented, that each worker reads itself (data.cache 'worker');
    # None: the Train dataset EMBED_TRAIN (or nothing: no kNN and no k-means)
    whole: StreamPlan | None = None

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config, source="the run's loop inputs")

    @property
    def n_train(self) -> int:
        return int(self.val.shape[0])


@dataclass
class WorkerState:
    """What one worker trains and checkpoints. ``epoch``: the epoch in progress (completed
    epochs before the loop starts one); ``step``: optimiser steps taken."""

    cfg: TrainConfig
    device: torch.device
    module: nn.Module  # the TrainModule as Ray Train prepared it (DDP; compiled if asked)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    clusters: ClusterState
    epoch: int = 0
    step: int = 0
    resumed: bool = False  # restored from a checkpoint of this run

    @property
    def inner(self) -> TrainModule:
        return train_module(self.module)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config[LOOP_INPUTS]``: the run's :class:`LoopInputs`."""
    inputs: LoopInputs = loop_config[LOOP_INPUTS]
    cfg = inputs.train_config()
    _quiet_ray_logs()
    _load_before_the_epochs()
    torch.manual_seed(cfg.run.seed)
    _record_pid(inputs.run_dir)
    state = build_state(cfg, inputs)
    run_log = _open_run_log(state, inputs)
    source = BatchSource.open(cfg, inputs.stream, state.device)
    whole = WholeTrainSplit(inputs.whole)
    for epoch in range(state.epoch + 1, cfg.optim.epochs + 1):
        state.epoch = epoch
        if _recluster_due(cfg, epoch):
            recluster(state, inputs, whole, run_log)
        metrics = train_one_epoch(state, source)
        if _knn_due(cfg, epoch):
            metrics["eval/knn_top1"] = online_knn(state, whole, inputs.val)
        if inputs.drops is not None:
            metrics[DROPPED_METRIC] = float(inputs.drops.count())
        report(state, metrics, run_log)
    if run_log is not None:
        run_log.close()


def _load_before_the_epochs() -> None:
    """Import here what the first step would: torchvision's ops (the view crops; the driver,
    which imports this module, never loads them) and torch._dynamo, which they and the first
    optimizer step load (~1.5 s), so that epoch 1's time and throughput hold no import."""
    import torch._dynamo  # noqa: F401
    import torchvision.ops  # noqa: F401


def build_state(cfg: TrainConfig, inputs: LoopInputs) -> WorkerState:
    """Model (and ce-clusters classifier), optimiser, scheduler, clusters: restored if saved."""
    device = ray.train.torch.get_device()
    clusters = ClusterState(clusters_by_index(cfg.data.dataset_dir, inputs.table), device=device)
    num_clusters = clusters.num_clusters if cfg.loss.method == "ce-clusters" else None
    # on the device before the optimiser: a restored optimiser state follows its parameters
    inner = TrainModule(build_model(cfg.model), num_clusters).to(device)
    optimizer, scheduler = build_optimizer(inner, cfg.optim, inputs.steps_per_epoch)
    state = WorkerState(cfg, device, inner, optimizer, scheduler, clusters)
    _restore(state, inputs.run_dir)
    state.module = ray.train.torch.prepare_model(maybe_compile(inner, cfg.model))
    return state


def _restore(state: WorkerState, run_dir: str) -> None:
    """Load Ray Train's latest checkpoint of this run into ``state``, if there is one."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return
    saved = load_checkpoint(
        checkpoint_location(checkpoint, run_dir),
        model=state.inner.model,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        loss_module=state.inner.classifier,
        clusters=state.clusters,
        model_config=state.cfg.model,
        map_location=state.device,
    )
    state.epoch, state.step, state.resumed = saved.epoch, saved.step, True
    if rank() == 0:
        log.info("resuming after epoch %d (step %d)", saved.epoch, saved.step)


def checkpoint_location(checkpoint: ray.train.Checkpoint, run_dir: str) -> str:
    """Where Ray Train keeps ``checkpoint`` of the run at ``run_dir`` (a folder or a URI), for
    :func:`load_checkpoint`, which reads a bucket's files straight into memory.

    Not Ray's ``as_directory``: it copies a bucket's checkpoint into one folder shared by the
    node's processes, and a rank that starts its copy after another rank's has finished copies
    again over the files that rank is reading (ray-project/ray#48726; it failed a resume from a
    bucket here with "PytorchStreamReader failed reading file").
    """
    return loc.join(run_dir, loc.name(checkpoint.path))


def _recluster_due(cfg: TrainConfig, epoch: int) -> bool:
    if not cfg.is_iterative_clustering or epoch <= cfg.clusters.warmup_epochs:
        return False
    return (epoch - cfg.clusters.warmup_epochs - 1) % cfg.clusters.recluster_every == 0


def _knn_due(cfg: TrainConfig, epoch: int) -> bool:
    every = cfg.eval.knn_every
    return every > 0 and (epoch % every == 0 or epoch == cfg.optim.epochs)


def train_one_epoch(state: WorkerState, source: BatchSource) -> dict[str, float]:
    """The optimiser steps of epoch ``state.epoch`` on this rank; the epoch's metrics (the loss
    is the mean over every rank's steps, the throughput that of all ranks)."""
    start = time.perf_counter()
    losses: list[float] = []
    images, waited = 0, 0.0
    batches = source.epoch(state.cfg, state.epoch, state.device)
    while True:
        asked = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - asked
        if batch is None:
            break
        batch["cluster"] = state.clusters.ids(batch[INDEX])  # (B,) int64, on the device
        prototypes = state.clusters.prototypes  # PCL's, after its first k-means; else None
        if state.clusters.levels is not None:
            batch[PROTOTYPE_IDS] = state.clusters.levels.ids(batch[INDEX])  # (B, M) int64
        losses.append(
            train_step(state.module, state.cfg, batch, state.optimizer, state.scheduler, prototypes)
        )
        images += batch["views"].shape[0]
        state.step += 1
    seconds = time.perf_counter() - start
    return {
        "train/loss": mean_over_ranks(losses, state.device),
        "train/lr": state.optimizer.param_groups[0]["lr"],
        "train/images_per_s": images * world_size() / seconds,
        "train/epoch_seconds": seconds,
        # getting the batches: waiting on Ray Data, or augmenting them here (data.cache worker)
        "train/input_seconds": waited,
        "clusters/version": float(state.clusters.version),
    }


def _embed_train_split(state: WorkerState, whole: WholeTrainSplit) -> SplitEmbedding | None:
    """The whole train split embedded by the current model: on rank 0; None elsewhere."""
    batches = whole.batches(state.cfg.eval.batch_size)
    return embed_split(state.inner.model, batches, state.device)


def recluster(
    state: WorkerState, inputs: LoopInputs, whole: WholeTrainSplit, run_log: RunLog | None
) -> None:
    """The next version of the clusters on every rank: k-means of the model's embeddings of the
    whole train split on rank 0 (PCL: one per granularity, with prototypes), broadcast; rank 0
    writes its table and logs its statistics."""
    cfg = state.cfg
    embedding = _embed_train_split(state, whole)
    version = state.clusters.version + 1
    settings = cfg.run_clusters.kmeans
    if cfg.loss.method == "pcl":
        levels = prototype_kmeans(
            embedding,
            inputs.n_train,
            cfg.loss.pcl_ks,
            settings,
            version,
            temperature=cfg.loss.temperature,
            dim=state.inner.model.proj_dim,
            device=state.device,
        )
        state.clusters.set_levels(version, levels)
    else:
        assignment = kmeans_assignment(
            embedding, inputs.n_train, cfg.clusters.k, settings, version, state.device
        )
        state.clusters.set(version, assignment)
    if run_log is not None:
        assert embedding is not None, "rank 0 holds the embeddings"
        stats = publish(state.clusters, embedding.labels, cfg.data.dataset_dir, inputs.run_dir)
        _log_cluster_stats(run_log, stats, state.step)


def online_knn(state: WorkerState, whole: WholeTrainSplit, val: np.ndarray) -> float:
    """kNN top-1 of the validation rows against the training rows (never the test split), on
    rank 0; nan on the other ranks and without validation rows (data.val_fraction 0)."""
    split = _embed_train_split(state, whole)
    if split is None:
        return math.nan
    queries = val[split.index]
    if not queries.any():
        return math.nan
    return knn_top1(
        split.features[~queries],
        split.labels[~queries],
        split.features[queries],
        split.labels[queries],
        k=state.cfg.eval.knn_k,
        temperature=state.cfg.eval.knn_temperature,
    )


def report(state: WorkerState, metrics: dict[str, float], run_log: RunLog | None) -> None:
    """Every rank reports the epoch's metrics (a barrier); rank 0 also logs them (the epoch's
    one line) and hands Ray Train the checkpoint."""
    metrics = {**metrics, "epoch": float(state.epoch), "step": float(state.step)}
    if run_log is None:
        ray.train.report(metrics)
        return
    run_log.scalars(metrics, state.step)
    run_log.record({"event": "epoch", **metrics})
    run_log.epoch_done(state.epoch, metrics["train/epoch_seconds"], metrics)
    with tempfile.TemporaryDirectory() as directory:
        inner = state.inner
        save_checkpoint(
            directory,
            model=inner.model,
            epoch=state.epoch,
            step=state.step,
            config=state.cfg,
            optimizer=state.optimizer,
            scheduler=state.scheduler,
            loss_module=inner.classifier,
            clusters=state.clusters,
            cluster_table_version=state.clusters.version,
            extra={"metrics": metrics},
        )
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=f"checkpoint_epoch{state.epoch:04d}",
        )


def _open_run_log(state: WorkerState, inputs: LoopInputs) -> RunLog | None:
    """Rank 0's RunLog (None elsewhere), with the resume or the starting clusters recorded."""
    if rank() != 0:
        return None
    run_log = RunLog(inputs.run_dir, state.cfg.optim.epochs)
    if state.resumed:
        run_log.record({"event": "resume", "after_epoch": state.epoch, "step": state.step})
    elif inputs.table_stats:
        _log_cluster_stats(run_log, inputs.table_stats, 0)
    return run_log


def _log_cluster_stats(run_log: RunLog, stats: dict[str, Any], step: int) -> None:
    keys = (
        "num_clusters",
        "cluster_entropy_bits",
        "mutual_information_bits",
        "conditional_entropy_bits",
        "label_entropy_bits",
    )
    values = {f"clusters/{k}": float(stats[k]) for k in keys if stats.get(k) is not None}
    run_log.scalars(values, step)
    run_log.record({"event": "clusters", **stats})


def _quiet_ray_logs() -> None:
    """Ray logs a line per report and per dataset execution; the epoch line says enough. Some
    of Ray Train's loggers are named by their file's path (``getLogger(__file__)``), not by the
    module: those are matched by the path."""
    paths = (f"{os.sep}ray{os.sep}train{os.sep}", f"{os.sep}ray{os.sep}data{os.sep}")
    names = [
        n
        for n in logging.root.manager.loggerDict
        if n.startswith(("ray.train", "ray.data")) or any(p in n for p in paths)
    ]
    for name in ["ray.train", "ray.data", *names]:
        logging.getLogger(name).setLevel(logging.WARNING)


def _record_pid(run_dir: str) -> None:
    """``<run_dir>/.worker_pids/rank{r}``: this attempt's worker, as JSON ``{"pid": int,
    "node_id": str}`` (the Ray node it runs on). Written atomically (a local path or a bucket):
    a reader polling the file never sees half of it."""
    record = {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}
    loc.write_text(loc.join(run_dir, PID_DIR, f"rank{rank()}"), json.dumps(record))
