"""Run a search with Ray Tune: trials, early stopping, concurrency, and resuming.

The metric is the online kNN top-1 of the validation split (``eval/knn_top1``, every epoch),
never the test split. ASHA stops the weaker trials early (``time_attr`` = the epoch). Each trial
is a whole training run whose Train workers reserve their own placement group while the trial's
actor holds a token of CPU, so Tune's own accounting cannot bound the trials: the number run at
once is derived from the cluster's resources and each trial's workers (``--max-concurrent``
overrides it); a trial that cannot get its workers yet waits for them.

A search is ``<run.output_dir>/tune/NAME/``, a local folder or a bucket's (``run.output_dir``
a URI: Tune's experiment, the trials' runs and the outputs all go there through pyarrow; no
node needs a shared disk). Running the same command again restores it: the finished and
errored trials stay as they are, the unfinished ones run again (each resuming its own
checkpoints). The folder records the space, the base config and the search settings it was
started with (``search.json``): another one under the same name is refused.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import posixpath
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from clinfo_ray.config import ConfigError, TrainConfig
from clinfo_ray.storage import location as loc
from clinfo_ray.tuning.space import SearchSpace
from clinfo_ray.tuning.trial import TUNER_DIR, TrialPlan

log = logging.getLogger(__name__)

METRIC = "eval/knn_top1"  # rank 0's online kNN on the validation split
MODE = "max"
TIME_ATTR = "epoch"
RECORD_FILE = "search.json"
# Logical CPUs left to Ray Data's tasks beside the running trials' workers (the streams and
# the kNN's embedding read the Parquet through Ray Data; so does `connect_ray`'s margin).
DATA_CPUS = 2.0

Scheduler = Literal["asha", "fifo"]
Algorithm = Literal["random", "optuna"]


@dataclass(frozen=True)
class SearchSettings:
    name: str
    num_samples: int = 1
    max_concurrent: int | None = None  # None: from the cluster's resources
    scheduler: Scheduler = "asha"
    algorithm: Algorithm = "random"
    grace_period: int | None = None  # None: a quarter of optim.epochs, at least 1
    reduction_factor: float = 2.0

    def grace(self, epochs: int) -> int:
        return self.grace_period or max(1, epochs // 4)


def search_dir(base: TrainConfig, name: str) -> str:
    """The search's folder: an absolute local path, or a URI."""
    return loc.join(loc.absolute(base.run.output_dir), "tune", name)


def trial_resources(cfg: TrainConfig, gpu: bool) -> dict[str, float]:
    """What one trial's workers reserve together."""
    resources = {"CPU": cfg.run.num_workers * cfg.run.cpus_per_worker}
    if gpu:
        resources["GPU"] = float(cfg.run.num_workers)
    return resources


def derived_max_concurrent(cfg: TrainConfig, cluster: Mapping[str, float], gpu: bool) -> int:
    """How many trials fit at once: the cluster's CPUs less DATA_CPUS for Ray Data, divided by
    one trial's workers' CPUs (and its GPUs by theirs); at least 1."""
    need = trial_resources(cfg, gpu)
    fits = math.floor((cluster.get("CPU", 0.0) - DATA_CPUS) / need["CPU"] + 1e-9)
    if gpu:
        fits = min(fits, math.floor(cluster.get("GPU", 0.0) / need["GPU"] + 1e-9))
    return max(1, fits)


def check_base(base: TrainConfig, space: SearchSpace, settings: SearchSettings) -> None:
    """What a search needs of its base config and settings (before Ray starts)."""
    if base.data.val_fraction <= 0:
        raise ConfigError(
            "data.val_fraction: a search scores the validation split (eval/knn_top1); it "
            f"must be > 0, got {base.data.val_fraction}",
            key="data.val_fraction",
        )
    if not settings.name or "/" in settings.name or settings.name in (".", ".."):
        raise ConfigError(f"--name: a non-empty name without '/'; got {settings.name!r}")
    if settings.algorithm == "optuna":
        if space.has_grid:
            grid = next(d.key for d in space.dimensions if d.kind == "grid")
            raise ConfigError(
                f"{space.path}: search: {grid}: a grid needs --search random (Optuna draws "
                "every value; use type: choice)",
                key=grid,
            )
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError(
                "--search optuna needs the optuna extra: pip install 'clinfo-ray[optuna]'"
            )
    if settings.scheduler == "asha" and settings.grace(base.optim.epochs) > base.optim.epochs:
        raise ConfigError(
            f"--grace-period {settings.grace_period} is more than optim.epochs "
            f"({base.optim.epochs})"
        )


def _record(base: TrainConfig, space: SearchSpace, settings: SearchSettings) -> dict[str, Any]:
    """What makes a search the same search (the concurrency may change between runs)."""
    chosen = {k: v for k, v in asdict(settings).items() if k != "max_concurrent"}
    chosen["num_samples"] = settings.num_samples
    return {"space": space.describe(), "base": base.to_dict(), "settings": chosen}


def _first_difference(old: Any, new: Any, where: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{where}.{key}".strip("."))
    return f"{where}: {old!r} then, {new!r} now"


@dataclass(frozen=True)
class TuneStorage:
    """Where Tune keeps an experiment in ``folder``: ``storage_path`` (the folder's path on its
    filesystem), ``experiment`` (the experiment's own path, what a rerun restores) and
    ``filesystem`` (the bucket's pyarrow filesystem; None for a local folder)."""

    storage_path: str
    experiment: str
    filesystem: Any

    @classmethod
    def of(cls, folder: str) -> TuneStorage:
        fs, path = loc.resolve(folder)
        return cls(path, posixpath.join(path, TUNER_DIR), fs if loc.is_uri(folder) else None)

    def can_restore(self) -> bool:
        from ray import tune

        return bool(tune.Tuner.can_restore(self.experiment, storage_filesystem=self.filesystem))


def claim_folder(path: str | Path, record: dict[str, Any], what: str, hint: str) -> bool:
    """Record what a search or study is (``record``, JSON) at ``path`` (a local path or a
    URI); True when the same record was there already (a rerun). Another one there is a
    ConfigError naming the first difference and ending in ``hint`` (what to do instead)."""
    record = json.loads(json.dumps(record))  # as it reads back
    if loc.is_file(path):
        old = json.loads(loc.read_text(path))
        if old != record:
            raise ConfigError(
                f"{what} in {loc.parent(str(path))} was started differently "
                f"({_first_difference(old, record)}): {hint}"
            )
        return True
    loc.write_text(str(path), json.dumps(record, indent=2) + "\n")
    return False


def claim_search_dir(
    folder: str, base: TrainConfig, space: SearchSpace, settings: SearchSettings
) -> bool:
    """Record what this search is in its folder; True when the folder already held it (a
    rerun). Another search under the same name is a ConfigError."""
    return claim_folder(
        loc.join(folder, RECORD_FILE),
        _record(base, space, settings),
        f"the search {loc.name(folder)!r}",
        "pass another --name, or delete the folder to start it over",
    )


def trial_dirname(trial: Any) -> str:
    """Tune's folder of a trial: its id, as the trial's training run under trials/."""
    return str(trial.trial_id)


def _scheduler(base: TrainConfig, settings: SearchSettings) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=base.optim.epochs,
        grace_period=settings.grace(base.optim.epochs),
        reduction_factor=settings.reduction_factor,
    )


def _search_algorithm(
    base: TrainConfig, settings: SearchSettings, max_concurrent: int
) -> tuple[Any, int | None]:
    """The search algorithm, and the max_concurrent_trials Tune must get with it (the
    random/grid generator limits itself; Tune ignores the setting beside it)."""
    if settings.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=base.run.seed), max_concurrent
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # seeded: a search draws the same values every time
    return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=base.run.seed), None


def run_search(
    base: TrainConfig,
    space: SearchSpace,
    settings: SearchSettings,
    max_concurrent: int,
) -> Any:
    """Start the search in ``search_dir(base, settings.name)``, or resume it; its ResultGrid.

    ``base`` has absolute paths (trials run elsewhere); Ray must be connected."""
    from ray import tune

    from clinfo_ray.tuning.trainable import make_trainable

    folder = search_dir(base, settings.name)
    rerun = claim_search_dir(folder, base, space, settings)
    trainable = make_trainable(TrialPlan(base.to_dict(), folder))
    storage = TuneStorage.of(folder)  # a local folder, or the bucket's filesystem
    if rerun and storage.can_restore():
        log.info("resuming the search in %s (finished trials are kept)", folder)
        tuner = tune.Tuner.restore(
            storage.experiment,
            trainable=trainable,
            storage_filesystem=storage.filesystem,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        algorithm, limit = _search_algorithm(base, settings, max_concurrent)
        tuner = tune.Tuner(
            trainable,
            param_space=space.param_space(),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode=MODE,
                num_samples=settings.num_samples,
                max_concurrent_trials=limit,
                scheduler=_scheduler(base, settings),
                search_alg=algorithm,
                reuse_actors=False,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=TUNER_DIR,
                storage_path=storage.storage_path,
                storage_filesystem=storage.filesystem,
                failure_config=tune.FailureConfig(max_failures=0),  # a crash is an error
                verbose=1,
            ),
        )
    return tuner.fit()
