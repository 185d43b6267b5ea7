"""Start a training run on Ray Train from the driver: clusters, streams, trainer, result.

Everything that can be checked without Ray (the config, the dataset, the batch size against the
dataset) is checked in :func:`check_before_ray`; call it before ``ray.init()``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from clinfo_ray.clusters.build import build_clusters, statistics_of_table
from clinfo_ray.config import ConfigError, TrainConfig, apply_overrides
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import read_manifest, sorted_ids, split_files
from clinfo_ray.data.read.decode import source_side
from clinfo_ray.data.splits import val_mask
from clinfo_ray.devices import local_gpu_memory, ray_uses_gpu
from clinfo_ray.storage import location as loc
from clinfo_ray.storage.checks import LocationError, check_remote

if TYPE_CHECKING:  # these import ray: only where a run starts
    from clinfo_ray.data.read.drop_counter import DropCounter
    from clinfo_ray.training.worker import LoopInputs

log = logging.getLogger(__name__)

# Ray Train's controller collects its workers' reports (and notices their end or failure) by
# polling them, every 2 s by default: a run ended about 3 s after its last report, and each
# report reached the controller (and Tune) up to 2 s late. A poll is one actor call per worker,
# so it costs some CPU (docs/benchmarks.md); a poll still running at the next one is waited for,
# not failed. Ray passes this variable from the driver to the controller; a value the user sets
# is kept (2 gives Ray's default back).
CONTROLLER_POLL_VAR = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
CONTROLLER_POLL_SECONDS = "0.25"


@runtime_checkable
class PreparesWorkers(Protocol):
    """A run callback that also has every worker do something before its loop (a Tune trial's
    report callback: tell the run's guard which placement group the workers hold)."""

    def before_train_loop(self) -> None: ...


@dataclass(frozen=True)
class TrainOutcome:
    """``run_dir`` and ``checkpoint`` (the last checkpoint's folder) are paths on the run's
    filesystem: local folders, or ``bucket/key`` for a run in a bucket, whose URIs
    (``s3://bucket/key``) are ``run_location`` and ``checkpoint_location``."""

    run_dir: Path
    checkpoint: Path | None  # the last checkpoint directory
    metrics: dict[str, Any]  # the last epoch's reported metrics
    cluster_stats: dict[str, Any] | None  # of the starting table (None: iterative k-means)
    run_location: str = ""  # run_dir as a local path or a URI ("": str(run_dir))
    checkpoint_location: str | None = None

    @property
    def run_uri(self) -> str:
        """The run's folder as a user names it: a local path or a URI."""
        return self.run_location or str(self.run_dir)

    @property
    def checkpoint_uri(self) -> str | None:
        if self.checkpoint_location is not None:
            return self.checkpoint_location
        return str(self.checkpoint) if self.checkpoint is not None else None


def check_before_ray(cfg: TrainConfig) -> int:
    """Fail fast, naming the key: the dataset must exist and hold a global batch of training
    rows (the train split less its validation rows). Returns the optimiser steps per epoch.
    A location given as a URI is checked first (bucket, credentials, endpoint, access)."""
    try:
        check_remote("data.dataset_dir", cfg.data.dataset_dir, "folder", C.MANIFEST)
        check_remote("clusters.table_path", cfg.clusters.table_path, "file")
        check_remote("run.output_dir", cfg.run.output_dir, "output")
    except LocationError as err:
        raise ConfigError(str(err), key=err.key) from None
    try:
        manifest = read_manifest(cfg.data.dataset_dir)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"data.dataset_dir: {err}", key="data.dataset_dir") from None
    train_rows = manifest.rows.get(C.TRAIN, 0)
    fit_rows = train_rows - int(val_by_index(cfg).sum()) if train_rows else 0
    steps = fit_rows // cfg.global_batch_size
    if steps < 1:
        raise ConfigError(
            f"data.batch_size_per_worker: {cfg.data.batch_size_per_worker} x "
            f"{cfg.run.num_workers} workers = {cfg.global_batch_size} images per step, but "
            f"{cfg.data.dataset_dir} has only {fit_rows} training images ({train_rows} train, "
            f"less data.val_fraction {cfg.data.val_fraction})",
            key="data.batch_size_per_worker",
        )
    if cfg.data.cache == "worker":
        _check_worker_cache_size(fit_rows, cfg)
    if cfg.clusters.table_path and not loc.is_file(cfg.clusters.table_path):
        raise ConfigError(
            f"clusters.table_path: no such file {cfg.clusters.table_path!r}",
            key="clusters.table_path",
        )
    return steps


def val_by_index(cfg: TrainConfig) -> np.ndarray:
    """(n_train,) bool by ``index`` (the row in the train split, ids sorted): the validation
    rows, which never train and are the online kNN's queries. Read-only; computed once per
    dataset and fraction (the check before Ray and the run's inputs share it)."""
    folder = loc.absolute(cfg.data.dataset_dir)
    written = loc.info(loc.join(folder, C.MANIFEST)).mtime_ns  # prepared again: read again
    return _val_by_index(folder, written, cfg.data.val_fraction)


@functools.lru_cache(maxsize=4)
def _val_by_index(dataset_dir: str, written: int, fraction: float) -> np.ndarray:
    group = read_manifest(dataset_dir).val_group
    mask = val_mask(sorted_ids(split_files(dataset_dir, C.TRAIN)), fraction, group)
    mask.setflags(write=False)
    return mask


def resolve_decode_size(cfg: TrainConfig) -> TrainConfig:
    """``data.decode_size`` made explicit: DECODE_MULTIPLE x image_size, capped by the size of
    the source images (sampled), never below image_size. Recorded in the run's config."""
    if cfg.data.decode_size is not None:
        return cfg
    side = source_side(split_files(cfg.data.dataset_dir, C.TRAIN))
    size = max(cfg.data.image_size, min(cfg.data.decode_side_bound, side))
    log.info("data.decode_size: %d (source images: %d px)", size, side)
    return apply_overrides(cfg, {"data.decode_size": size})


def resolve_device(cfg: TrainConfig) -> TrainConfig:
    """``run.device`` made explicit: "auto" is "gpu" when the connected Ray cluster offers a
    GPU, else "cpu" (starting a local Ray if none is connected). Recorded in the run's config,
    which the workers (bf16 autocast) and a resumed run read."""
    if cfg.run.device != "auto":
        return cfg
    device = "gpu" if ray_uses_gpu(cfg.run.device) else "cpu"
    log.info("run.device: %s", device)
    return apply_overrides(cfg, {"run.device": device})


def _check_worker_cache_size(train_rows: int, cfg: TrainConfig) -> None:
    """data.cache 'worker' puts the whole decoded split in every worker: refuse what cannot fit
    in half of this machine's memory (the workers of a local run share it) and, where the
    workers of a local run use this machine's GPUs (one each), in half of the smallest one's
    (nvidia-smi's; unknown without it, and for a cluster's workers: not checked)."""
    need = train_rows * 3 * cfg.data.decode_side_bound**2
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    local = not os.environ.get("RAY_ADDRESS")
    workers = cfg.run.num_workers if local else 1
    problem = worker_cache_problem(need, workers, total, "this machine's memory")
    gpus = local_gpu_memory() if local and cfg.run.device != "cpu" else None
    if problem is None and gpus:
        smallest = f"the smallest of this machine's {len(gpus)} GPU(s)"
        problem = worker_cache_problem(need, 1, min(gpus), smallest)
    if problem is not None:
        raise ConfigError(f"data.cache: {problem}; use 'object_store' or 'none'", key="data.cache")


def worker_cache_problem(need: int, holders: int, capacity: int, memory: str) -> str | None:
    """Why ``holders`` copies of ``need`` bytes of decoded images (one per worker) do not fit in
    half of ``capacity`` bytes of ``memory`` (its name in the message), the other half being the
    model's, the batches' and the process's; None when they fit."""
    if need * holders <= capacity // 2:
        return None
    return (
        f"'worker' would hold {need / 2**30:.1f} GiB of decoded images in each of {holders} "
        f"worker(s), more than half of {memory} ({capacity / 2**30:.0f} GiB)"
    )


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with its input paths resolved against the driver's working directory."""
    paths = {"data.dataset_dir": loc.absolute(cfg.data.dataset_dir)}
    if cfg.clusters.table_path:
        paths["clusters.table_path"] = loc.absolute(cfg.clusters.table_path)
    return apply_overrides(cfg, paths)


def prepare_cluster_table(cfg: TrainConfig, run_dir: str) -> tuple[str | None, dict | None]:
    """The run's starting id -> cluster table and its statistics (None for iterative k-means,
    which starts from instance clusters and builds its own tables in the loop)."""
    if cfg.is_iterative_clustering:
        return None, None
    label_column = cfg.data.label_column
    if cfg.clusters.table_path:
        return cfg.clusters.table_path, statistics_of_table(
            cfg.clusters.table_path, cfg.data.dataset_dir, label_column=label_column
        )
    clusters = cfg.run_clusters  # the method and the k-means seed resolved
    path = loc.join(run_dir, "clusters", f"{clusters.method}.parquet")
    stats_file = loc.with_suffix(path, ".stats.json")
    if loc.is_file(path) and loc.is_file(stats_file):  # a resumed run keeps its clusters
        return path, json.loads(loc.read_text(stats_file))
    return path, build_clusters(clusters, cfg.data.dataset_dir, path, label_column=label_column)


def build_inputs(
    cfg: TrainConfig,
    run_dir: str,
    table: str | None,
    stats: dict | None,
    steps_per_epoch: int,
    drops: DropCounter | None,
) -> tuple[LoopInputs, dict[str, Any]]:
    """What every worker gets: the loop inputs (config, starting clusters, the training rows'
    stream plan, the validation rows) and the whole train split unaugmented for the online kNN
    (bank: training rows; queries: validation rows) and k-means. With data.cache 'worker' each
    worker reads both splits itself (no Ray Data); else the whole split is a Ray Data dataset
    of the run (materialised in the object store with 'object_store')."""
    from clinfo_ray.data.read.stream import StreamPlan
    from clinfo_ray.training.objective import augmentation_of
    from clinfo_ray.training.split_sources import EMBED_TRAIN
    from clinfo_ray.training.worker import LoopInputs

    d = cfg.data
    val = val_by_index(cfg)
    train = StreamPlan.build(
        d.dataset_dir,
        augmentation=augmentation_of(cfg) if d.augment_on == "ray_data" else None,
        decode_size=d.decode_side_bound,
        keep=~val,  # (the worker maps each row's index to its cluster: no table needed here)
        seed=cfg.run.seed,
        drops=drops,
        cache=d.cache == "object_store",
        label_column=d.label_column,
    )
    datasets: dict[str, Any] = {}
    whole = None
    if cfg.eval.knn_every > 0 or cfg.is_iterative_clustering:
        whole = StreamPlan.build(
            d.dataset_dir,
            augmentation=None,
            decode_size=d.image_size,
            label_column=d.label_column,
        )
        if d.cache != "worker":
            everything = whole.dataset()
            datasets[EMBED_TRAIN] = everything.materialize() if d.cache != "none" else everything
            whole = None
    inputs = LoopInputs(
        config=cfg.to_dict(),
        table=table,
        table_stats=stats,
        steps_per_epoch=steps_per_epoch,
        run_dir=str(run_dir),
        drops=drops,
        stream=train,
        val=val,
        whole=whole,
    )
    return inputs, datasets


def train(cfg: TrainConfig, *, callbacks: Sequence[Any] = ()) -> TrainOutcome:
    """Run (or resume: same run.name and output_dir) one training run on the connected Ray
    (a local one is started when none is). ``callbacks``: extra Ray Train callbacks of the run
    (a Tune trial's report to Tune); those that are :class:`PreparesWorkers` also run on every
    worker before its loop."""
    from clinfo_ray.data.read.drop_counter import DropCounter

    steps_per_epoch = check_before_ray(cfg)
    # workers do not run in the driver's working directory
    cfg = resolve_device(resolve_decode_size(with_absolute_paths(cfg)))
    run_dir = loc.join(cfg.run.output_dir, cfg.run.name)  # a local path or a URI
    loc.makedirs(run_dir)
    loc.write_text(loc.join(run_dir, "config.json"), json.dumps(cfg.to_dict(), indent=2) + "\n")
    table, stats = prepare_cluster_table(cfg, run_dir)
    # data.cache 'worker': every worker reads the split whole: each dropped image counts once
    drops = DropCounter.create(distinct=cfg.data.cache == "worker")
    try:
        inputs, datasets = build_inputs(cfg, run_dir, table, stats, steps_per_epoch, drops)
        return _fit(cfg, inputs, datasets, callbacks)
    finally:
        drops.close()  # one actor per run: a Tune search would otherwise pile them up


def _fit(
    cfg: TrainConfig, inputs: LoopInputs, datasets: dict[str, Any], callbacks: Sequence[Any] = ()
) -> TrainOutcome:
    import ray.train
    from ray.train.torch import TorchTrainer

    from clinfo_ray.training.worker import LOOP_INPUTS, train_loop_per_worker

    # Ray Train writes checkpoints through the run's pyarrow filesystem: a local folder or a
    # bucket (storage_filesystem); a checkpoint it lists is a complete upload.
    filesystem, run_path = loc.resolve(inputs.run_dir)
    gpu = cfg.run.device == "gpu"
    resources = {"CPU": cfg.run.cpus_per_worker, **({"GPU": 1.0} if gpu else {})}
    setups = tuple(c.before_train_loop for c in callbacks if isinstance(c, PreparesWorkers))
    os.environ.setdefault(CONTROLLER_POLL_VAR, CONTROLLER_POLL_SECONDS)  # read by TorchTrainer
    trainer = TorchTrainer(
        functools.partial(_loop_after, setups) if setups else train_loop_per_worker,
        train_loop_config={LOOP_INPUTS: inputs},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.run.num_workers, use_gpu=gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=posixpath.dirname(run_path),
            storage_filesystem=filesystem if loc.is_uri(inputs.run_dir) else None,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        # every worker reads these whole; the training stream is cut by the workers themselves
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    result = trainer.fit()
    checkpoint = Path(result.checkpoint.path) if result.checkpoint is not None else None
    return TrainOutcome(
        Path(run_path),
        checkpoint,
        dict(result.metrics or {}),
        inputs.table_stats,
        run_location=inputs.run_dir,
        checkpoint_location=loc.join(inputs.run_dir, checkpoint.name) if checkpoint else None,
    )


def _loop_after(setups: Sequence[Callable[[], None]], loop_config: dict[str, Any]) -> None:
    """A worker's loop, after the callbacks' ``before_train_loop``."""
    from clinfo_ray.training.worker import train_loop_per_worker

    for setup in setups:
        setup()
    train_loop_per_worker(loop_config)
