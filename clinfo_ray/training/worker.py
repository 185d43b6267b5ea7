"""The per-worker training loop: build, restore, then for each epoch iterate, step, report."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import nn

from clinfo_ray.checkpointing import load_checkpoint, save_checkpoint
from clinfo_ray.config import TrainConfig
from clinfo_ray.data.augment import ViewAugmentation
from clinfo_ray.data.stream import DROPPED_METRIC, StreamPlan
from clinfo_ray.data.worker_cache import InMemorySplit
from clinfo_ray.distributed import mean_over_ranks, rank, until_any_rank_ends, world_size
from clinfo_ray.evaluation.knn import knn_top1
from clinfo_ray.model import build_model, maybe_compile
from clinfo_ray.optim import build_optimizer
from clinfo_ray.training import cluster_state
from clinfo_ray.training.cluster_state import ClusterState
from clinfo_ray.training.embedding import embed_split
from clinfo_ray.training.objective import (
    TrainModule,
    augmentation_of,
    train_module,
    train_step,
)
from clinfo_ray.training.run_log import RunLog

log = logging.getLogger(__name__)

EMBED_TRAIN = "embed_train"  # the whole train split, unaugmented: kNN bank + queries, k-means
PID_DIR = ".worker_pids"  # rank -> pid of the current attempt (operators and tests read it)


def _epochs_to_recluster(cfg: TrainConfig, epoch: int) -> bool:
    if not cfg.is_iterative_clustering or epoch <= cfg.clusters.warmup_epochs:
        return False
    return (epoch - cfg.clusters.warmup_epochs - 1) % cfg.clusters.recluster_every == 0


def _knn_due(cfg: TrainConfig, epoch: int) -> bool:
    every = cfg.eval.knn_every
    return every > 0 and (epoch % every == 0 or epoch == cfg.optim.epochs)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. ``loop_config``: config (a plain dict), table, steps_per_epoch,
    run_dir, drops (a DropCounter or None), table_stats (dict or None), stream (a StreamPlan,
    None with data.cache 'worker'), val ((n_train,) bool by index: the validation rows)."""
    cfg = TrainConfig.from_dict(loop_config["config"])
    _quiet_ray_logs()
    run_dir = Path(loop_config["run_dir"])
    torch.manual_seed(cfg.run.seed)
    device = ray.train.torch.get_device()
    _record_pid(run_dir)
    clusters = ClusterState(
        0, cluster_state.table_assignment(cfg.data.dataset_dir, loop_config["table"])
    )
    num_clusters = clusters.num_clusters if cfg.loss.method == "ce-clusters" else None
    inner = TrainModule(build_model(cfg.model), num_clusters)
    optimizer, scheduler = build_optimizer(inner, cfg.optim, loop_config["steps_per_epoch"])
    epoch, step, clusters, resumed = _restore(cfg, inner, optimizer, scheduler, clusters)
    module: nn.Module = ray.train.torch.prepare_model(maybe_compile(inner, cfg.model))
    run_log = RunLog(run_dir, cfg.optim.epochs) if rank() == 0 else None
    if run_log is not None and resumed:
        run_log.record({"event": "resume", "after_epoch": epoch, "step": step})
    if run_log is not None and epoch == 0 and loop_config.get("table_stats"):
        _log_cluster_stats(run_log, loop_config["table_stats"], 0)
    augmentation = _worker_augmentation(cfg)
    memory = _load_memory(cfg, device)
    while epoch < cfg.optim.epochs:
        epoch += 1
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        if _epochs_to_recluster(cfg, epoch):
            clusters = _recluster(module, cfg, clusters, device, run_dir, run_log, step)
        losses, images, waited = [], 0, 0.0
        batches = _epoch_batches(cfg, loop_config["stream"], memory, augmentation, device, epoch)
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            batch["cluster"] = clusters.ids(batch["index"])
            losses.append(train_step(module, cfg, batch, optimizer, scheduler))
            images += batch["views"].shape[0]
            step += 1
        seconds = time.perf_counter() - start
        metrics = {
            "train/loss": mean_over_ranks(losses, device),  # every rank's steps, not rank 0's
            "train/lr": optimizer.param_groups[0]["lr"],
            "train/images_per_s": images * world_size() / seconds,
            "train/epoch_seconds": seconds,
            # getting the batches: waiting on Ray Data, or augmenting them here (data.cache worker)
            "train/input_seconds": waited,
            "clusters/version": float(clusters.version),
        }
        if _knn_due(cfg, epoch):
            metrics["eval/knn_top1"] = _online_knn(module, cfg, device, loop_config["val"])
        if loop_config.get("drops") is not None:
            metrics[DROPPED_METRIC] = float(loop_config["drops"].count())
        _report(module, cfg, optimizer, scheduler, clusters, run_log, epoch, step, metrics)
    if run_log is not None:
        run_log.close()


def _restore(
    cfg: TrainConfig,
    inner: TrainModule,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    clusters: ClusterState,
) -> tuple[int, int, ClusterState, bool]:
    """(epoch, step, clusters, resumed) from Ray Train's latest checkpoint, if there is one."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, 0, clusters, False
    with checkpoint.as_directory() as directory:
        state = load_checkpoint(
            directory,
            model=inner.model,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_module=inner.classifier,
            model_config=cfg.model,
        )
        clusters = cluster_state.load_state(Path(directory), clusters)
    log.info("rank %d resumes after epoch %d (step %d)", rank(), state.epoch, state.step)
    return state.epoch, state.step, clusters, True


def _report(
    module: nn.Module,
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    clusters: ClusterState,
    run_log: RunLog | None,
    epoch: int,
    step: int,
    metrics: dict[str, float],
) -> None:
    """Rank 0 writes the checkpoint directory and the logs; every rank reports (a barrier)."""
    metrics = {**metrics, "epoch": float(epoch), "step": float(step)}
    if run_log is None:
        ray.train.report(metrics)
        return
    run_log.scalars(metrics, step)
    run_log.record({"event": "epoch", **metrics})
    run_log.epoch_done(epoch, metrics["train/epoch_seconds"], metrics)
    inner = train_module(module)
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(
            directory,
            model=inner.model,
            epoch=epoch,
            step=step,
            config=cfg,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_module=inner.classifier,
            cluster_table_version=clusters.version,
            extra={"metrics": metrics},
        )
        cluster_state.save_state(clusters, Path(directory))
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=f"checkpoint_epoch{epoch:04d}",
        )


def _recluster(
    module: nn.Module,
    cfg: TrainConfig,
    old: ClusterState,
    device: torch.device,
    run_dir: Path,
    run_log: RunLog | None,
    step: int,
) -> ClusterState:
    model = train_module(module).model
    shard = ray.train.get_dataset_shard(EMBED_TRAIN)
    embedding = embed_split(model, shard, device, cfg.eval.linear_batch_size)
    new = cluster_state.recluster(embedding, cfg.clusters, cfg.run.seed, old.version + 1, device)
    if run_log is not None:
        stats = cluster_state.publish(new, embedding, cfg.data.dataset_dir, run_dir)
        _log_cluster_stats(run_log, stats, step)
    return new


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


def _online_knn(
    module: nn.Module, cfg: TrainConfig, device: torch.device, val: np.ndarray
) -> float:
    """kNN top-1 of the validation rows against the training rows (never the test split);
    nan without validation rows (data.val_fraction 0)."""
    model = train_module(module).model
    split = embed_split(
        model, ray.train.get_dataset_shard(EMBED_TRAIN), device, cfg.eval.linear_batch_size
    )
    queries = val[split.index]
    if rank() != 0 or not queries.any():
        return math.nan
    return knn_top1(
        split.features[~queries],
        split.labels[~queries],
        split.features[queries],
        split.labels[queries],
        k=cfg.eval.knn_k,
        temperature=cfg.eval.knn_temperature,
    )


def _worker_augmentation(cfg: TrainConfig) -> ViewAugmentation | None:
    if cfg.data.augment_on != "worker":
        return None
    return augmentation_of(cfg)


def _load_memory(cfg: TrainConfig, device: torch.device) -> InMemorySplit | None:
    """With data.cache 'worker': the whole train split, read once from the (unsplit) stream."""
    if cfg.data.cache != "worker":
        return None
    start = time.perf_counter()
    memory = InMemorySplit.load(ray.train.get_dataset_shard("train"), device)
    log.info(
        "rank %d holds the train split: %d images, %.1f MiB on %s, read in %.1f s",
        rank(),
        len(memory),
        memory.nbytes / 2**20,
        device,
        time.perf_counter() - start,
    )
    return memory


def _epoch_batches(
    cfg: TrainConfig,
    stream: StreamPlan | None,
    memory: InMemorySplit | None,
    augmentation: ViewAugmentation | None,
    device: torch.device,
    epoch: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's batches of one epoch: cut from worker memory or streamed by Ray Data (every
    rank stops when the first runs out: the streamed shares differ by a few rows)."""
    batch_size = cfg.data.batch_size_per_worker
    if memory is None:
        assert stream is not None, "without data.cache 'worker' the driver sends a StreamPlan"
        batches = stream.iter_epoch(
            epoch,
            batch_size=batch_size,
            rank=rank(),
            world=world_size(),
            device=device,
            augmentation=augmentation,
        )
        return until_any_rank_ends(batches, device)
    assert augmentation is not None, "data.cache 'worker' implies data.augment_on 'worker'"
    return memory.batches(
        epoch=epoch,
        seed=cfg.run.seed,
        rank=rank(),
        world=world_size(),
        batch_size=batch_size,
        augmentation=augmentation,
    )


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


def _record_pid(run_dir: Path) -> None:
    folder = run_dir / PID_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{rank()}").write_text(str(os.getpid()))
