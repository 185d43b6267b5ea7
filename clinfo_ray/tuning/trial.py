"""What one trial trains: its config, its folder, and the cluster tables trials share.

A search lives in ``<run.output_dir>/tune/NAME/``. Each trial is a whole training run named by
its trial id under ``trials/`` (checkpoints, metrics.jsonl, TensorBoard: ``tensorboard --logdir
trials`` shows every trial), so a trial Tune starts again resumes its own checkpoints. The
cluster tables of the fixed methods are built once per distinct clusters config and dataset
into ``clusters/<hash>.parquet``, under a file lock, and every trial with that config trains on
the same table (``clusters.table_path``). A search in a bucket has no lock to take: each trial
builds its own table in its own run folder (resumed with the run). Nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinfo_ray.clusters.build import build_clusters, stats_path
from clinfo_ray.config import TrainConfig, apply_overrides
from clinfo_ray.data import columns as C
from clinfo_ray.storage import location as loc

TRIALS_DIR = "trials"  # the trials' training runs, one folder per trial id
CLUSTERS_DIR = "clusters"  # the shared cluster tables
TUNER_DIR = "tuner"  # Ray Tune's experiment (its state, what a rerun restores)
# Methods whose table is worth sharing: built from the dataset by real work. (instance and
# labels are read straight off the ids; kmeans re-clusters the model's own embeddings.)
SHARED_METHODS = ("tags", "tags-kmeans", "hierarchy")


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a search shares: the base config (plain dict, absolute paths) and
    the search's folder. Small and picklable: it travels to each trial's actor."""

    base: dict[str, Any]
    search_dir: str

    @property
    def trials_dir(self) -> str:
        """The trials' runs: a local path, or a URI for a search in a bucket."""
        return loc.join(self.search_dir, TRIALS_DIR)

    @property
    def clusters_dir(self) -> Path | None:
        """The shared cluster tables; None for a search in a bucket (no lock there)."""
        return None if loc.is_uri(self.search_dir) else Path(self.search_dir) / CLUSTERS_DIR

    def trial_config(self, params: Mapping[str, Any], trial_id: str) -> Any:
        """The trial's config: the base with the drawn ``params``, run ``trial_id`` under
        ``trials/``, the online kNN every epoch (the search's metric)."""
        own = {
            "run.name": trial_id,
            "run.output_dir": self.trials_dir,
            "eval.knn_every": 1,
        }
        base = TrainConfig.from_dict(self.base, "the search's base config")
        return apply_overrides(base, {**params, **own}, f"trial {trial_id}")


def cluster_table_key(cfg: TrainConfig) -> str:
    """A digest of what decides a run's starting table and its statistics: its clusters config
    (method and k-means seed resolved), the dataset (folder and manifest contents) and the
    downstream label column."""
    clusters = dataclasses.asdict(cfg.run_clusters)
    clusters.pop("table_path", None)
    folder = loc.absolute(cfg.data.dataset_dir)
    manifest = hashlib.sha256(loc.read_bytes(loc.join(folder, C.MANIFEST))).hexdigest()
    text = json.dumps(
        {
            "clusters": clusters,
            "dataset": folder,
            "manifest": manifest,
            "label_column": cfg.data.label_column,  # the statistics beside the table use it
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created), across processes and nodes sharing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shared_cluster_table(cfg: TrainConfig, cache_dir: Path | None) -> Path | None:
    """The cached table of ``cfg``'s starting clusters, built by the first trial that needs it
    (the others wait on the lock, then read it); None when the run takes no shared table (its
    own ``clusters.table_path``, fixed instance or label clusters, iterative k-means, or no
    ``cache_dir``: a search in a bucket)."""
    if cache_dir is None or cfg.clusters.table_path or cfg.cluster_method not in SHARED_METHODS:
        return None
    key = cluster_table_key(cfg)
    table = cache_dir / f"{key}.parquet"
    with _locked(cache_dir / f"{key}.lock"):
        if not (table.is_file() and Path(stats_path(table)).is_file()):
            partial = cache_dir / f"{key}.{os.getpid()}.partial.parquet"
            build_clusters(
                cfg.run_clusters,
                cfg.data.dataset_dir,
                partial,
                label_column=cfg.data.label_column,
            )
            os.replace(stats_path(partial), stats_path(table))
            os.replace(partial, table)  # the table last: a table present is a table complete
    return table


def with_shared_clusters(cfg: TrainConfig, cache_dir: Path | None) -> Any:
    """``cfg`` training on the shared table of its clusters (unchanged when it takes none)."""
    table = shared_cluster_table(cfg, cache_dir)
    if table is None:
        return cfg
    return apply_overrides(cfg, {"clusters.table_path": str(table)}, "the shared clusters")
