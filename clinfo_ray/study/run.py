"""Run a study as a Ray Tune grid: one trial per (method, seed), resumable, packed on the cluster.

A study lives in ``<run.output_dir>/study/NAME/``: ``trials/<method>-seed<seed>/`` (with a
settings axis ``trials/<setting>-<method>-seed<seed>/``; :func:`trial_name`; each trial's
training run: checkpoints, metrics, TensorBoard, and ``study_record.json`` once evaluated),
``clusters/`` (the cluster tables shared by trials with one clusters config), ``tuner/`` (Ray
Tune's experiment) and ``results.jsonl`` (one line per evaluated trial, appended as trials end).
The folder may be in a bucket (``run.output_dir: s3://...``): Tune's experiment and the trials'
runs are written there through its pyarrow filesystem; an object cannot be appended to, so
there the trials' own record files are the study's records (:func:`folder_records`) and each
trial builds its own cluster table (no lock to share one by, as in a Tune search).
Trials are named by (setting, method, seed), not by Tune's trial id, so a study started over from
nothing still finds a trial's checkpoints and its record: a trial with a record is not trained
again, and one with checkpoints resumes them. Running the same command again after an
interruption restores the Tune experiment (finished trials kept, the others resumed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinfo_ray.config import TrainConfig, apply_overrides
from clinfo_ray.storage import location as loc
from clinfo_ray.study.records import TrialRecord, append_record, read_records
from clinfo_ray.study.spec import Study

if TYPE_CHECKING:
    from clinfo_ray.data.manifest import Manifest
    from clinfo_ray.data.write.sources.source_table import SourceTable

log = logging.getLogger(__name__)

TRIALS_DIR, CLUSTERS_DIR, TUNER_DIR = "trials", "clusters", "tuner"
RESULTS_FILE = "results.jsonl"
RECORD_FILE = "study_record.json"  # in a trial's run folder, once it is evaluated
STUDY_FILE = "study.json"  # what the study is; a rerun must match it
SETTINGS_FILE = "setting_search.jsonl"
WALL_FILE = "wall_seconds.json"  # the study's wall time over all its invocations


def study_dir(study: Study) -> str:
    """The study's folder: an absolute local path, or a URI."""
    return loc.join(loc.absolute(study.base.run.output_dir), "study", study.name)


def trial_name(method: str, seed: int, setting: str = "") -> str:
    """A trial's run name: its setting (when the study has settings), the method and the seed
    (anything but [A-Za-z0-9_.-] as '_')."""
    name = f"{setting}-{method}-seed{seed}" if setting else f"{method}-seed{seed}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@dataclass(frozen=True)
class StudyPlan:
    """What every trial needs; picklable, it travels to each trial's actor."""

    study: Study
    folder: str

    def trial_config(self, method: str, seed: int, setting: str = "") -> TrainConfig:
        cfg = self.study.trial_config(method, seed, setting)
        own = {
            "run.name": trial_name(method, seed, setting),
            "run.output_dir": loc.join(self.folder, TRIALS_DIR),
        }
        return apply_overrides(cfg, own, f"study trial {method} seed {seed}")


def claim_study_dir(folder: str, study: Study) -> bool:
    """Record the study in its folder; True on a rerun of the same study. A different study
    under the same name is a ConfigError (another output folder, or delete this one)."""
    from clinfo_ray.tuning.search import claim_folder

    return claim_folder(
        loc.join(folder, STUDY_FILE),
        study.describe(),
        f"the study {study.name!r}",
        "pass --set run.output_dir=..., or delete the folder to start it over",
    )


def dataset_to_prepare(study: Study) -> SourceTable | None:
    """What :func:`ensure_dataset` will write: None when the study's dataset folder holds a
    dataset this code reads; else the source of the study's ``prepare`` section, listed (npm
    packages fetched, files found) without Ray, so that a missing source fails before Ray
    starts, with a PrepareError naming what is missing and how to get it. Without a ``prepare``
    section, the folder's own FileNotFoundError or ValueError."""
    from clinfo_ray.data.manifest import read_manifest
    from clinfo_ray.data.write.prepare import list_source

    folder = study.base.data.dataset_dir
    try:
        read_manifest(folder)
        return None
    except (FileNotFoundError, ValueError):
        if study.prepare is None:
            raise
    return list_source(dataclasses.replace(study.prepare, out=folder, overwrite=True))


def ensure_dataset(study: Study, source: SourceTable | None) -> Manifest:
    """The study's dataset manifest, written first from ``source`` (what
    :func:`dataset_to_prepare` listed) when there is one. Ray must be connected."""
    from clinfo_ray.data.manifest import read_manifest
    from clinfo_ray.data.write.prepare import prepare

    folder = study.base.data.dataset_dir
    if source is not None:
        assert study.prepare is not None  # dataset_to_prepare lists only from it
        print(f"preparing {folder} from {study.prepare.source} ...", flush=True)
        prepare(dataclasses.replace(study.prepare, out=folder, overwrite=True), source)
    return read_manifest(folder)


def run_study_trial(config: dict[str, Any], plan: StudyPlan) -> None:
    """One trial: train (or resume) the method at the seed, evaluate it once, record it."""
    from ray import tune

    from clinfo_ray.study.evaluate import cluster_information, evaluate_trial
    from clinfo_ray.study.rules import record_first_test_read
    from clinfo_ray.training.launch import train
    from clinfo_ray.tuning.trainable import ReportToTune, quiet_ray_data
    from clinfo_ray.tuning.trial import with_shared_clusters

    quiet_ray_data()
    method, seed, setting = str(config["method"]), int(config["seed"]), str(config["setting"])
    cfg = plan.trial_config(method, seed, setting)
    run_dir = loc.join(cfg.run.output_dir, cfg.run.name)
    saved = loc.join(run_dir, RECORD_FILE)
    if loc.is_file(saved):  # evaluated before the study was interrupted
        tune.report({"evaluated": 1, "epoch": cfg.optim.epochs})
        return
    in_bucket = loc.is_uri(plan.folder)
    cfg = with_shared_clusters(cfg, None if in_bucket else Path(plan.folder) / CLUSTERS_DIR)
    outcome = train(cfg, callbacks=[ReportToTune()])
    if outcome.checkpoint_uri is None:
        raise RuntimeError(f"{cfg.run.name}: the run left no checkpoint to evaluate")
    train_seconds = _train_seconds(run_dir)
    if plan.study.evaluate_test:  # the first trial to get here is the study's first test read
        record_first_test_read(plan.folder, plan.study)
    scores = evaluate_trial(
        cfg, outcome.checkpoint_uri, plan.study.probe, evaluate_test=plan.study.evaluate_test
    )
    record = TrialRecord(
        method=method,
        seed=seed,
        loss_method=cfg.loss.method,
        cluster_method=cfg.cluster_method,
        val=scores["val"],
        test=scores["test"],
        probe=scores["probe"],
        clusters=cluster_information(run_dir, outcome.cluster_stats),
        epochs=cfg.optim.epochs,
        train_seconds=train_seconds,
        eval_seconds=scores["seconds"],
        trial_id=tune.get_context().get_trial_id() or "",
        setting=setting,
    )
    details = json.dumps(
        {**scores, "record": json.loads(record.to_json())}, indent=2, sort_keys=True
    )
    if in_bucket:  # one object, written whole: the trial's record (see folder_records)
        loc.write_text(saved, details + "\n")
    else:  # the line first, then the file: a trial with a record file is in results.jsonl
        partial = Path(saved).with_suffix(".partial")
        partial.write_text(details + "\n")
        append_record(Path(plan.folder) / RESULTS_FILE, record)
        os.replace(partial, saved)
    tune.report(
        {
            "evaluated": 1,
            "epoch": cfg.optim.epochs,
            **{f"val/{k}": v for k, v in scores["val"].items()},
        }
    )


def _train_seconds(run_dir: str) -> float:
    """The run's training time: the sum of its epochs' seconds (metrics.jsonl), so a resumed run
    counts each epoch once and the evaluation is not in it."""
    from clinfo_ray.training.run_log import METRICS_FILE

    seconds: dict[int, float] = {}
    path = loc.join(run_dir, METRICS_FILE)
    if loc.is_file(path):
        for line in loc.read_text(path).splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("event") == "epoch" and "train/epoch_seconds" in row:
                seconds[int(row["epoch"])] = float(row["train/epoch_seconds"])
    return sum(seconds.values())


def make_trainable(plan: StudyPlan) -> Any:
    from ray import tune

    from clinfo_ray.tuning.trainable import TRIAL_ACTOR_RESOURCES, StopsItsTrainRun

    run_study_trial.__mixins__ = (StopsItsTrainRun,)  # type: ignore[attr-defined]
    return tune.with_resources(
        tune.with_parameters(run_study_trial, plan=plan), TRIAL_ACTOR_RESOURCES
    )


def run_grid(study: Study, max_concurrent: int) -> Any:
    """Run every (method, seed) trial not yet recorded, or resume the study; Tune's ResultGrid.
    Ray must be connected."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from clinfo_ray.tuning.search import TuneStorage

    folder = study_dir(study)
    rerun = claim_study_dir(folder, study)
    trainable = make_trainable(StudyPlan(study, folder))
    storage = TuneStorage.of(folder)  # a local folder, or the bucket's filesystem
    if rerun and storage.can_restore():
        log.info("resuming the study in %s (recorded trials are kept)", folder)
        tuner = tune.Tuner.restore(
            storage.experiment,
            trainable=trainable,
            storage_filesystem=storage.filesystem,
            resume_unfinished=True,
            resume_errored=True,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={
                "setting": tune.grid_search([st.name for st in study.settings]),
                "method": tune.grid_search([m.name for m in study.methods]),
                "seed": tune.grid_search(list(study.seeds)),
            },
            tune_config=tune.TuneConfig(
                search_alg=BasicVariantGenerator(max_concurrent=max_concurrent),
                reuse_actors=False,
                trial_dirname_creator=lambda trial: str(trial.trial_id),
            ),
            run_config=tune.RunConfig(
                name=TUNER_DIR,
                storage_path=storage.storage_path,
                storage_filesystem=storage.filesystem,
                failure_config=tune.FailureConfig(max_failures=1),
                verbose=1,
            ),
        )
    return tuner.fit()


def adopt_published(study: Study, out: str) -> int:
    """Take the trials already published in ``out`` (a committed results.jsonl, e.g. from an
    earlier session whose run folder is gone) into the study's folder as evaluated: each
    (setting, method, seed) of the grid recorded there under today's protocol and not yet in
    the folder gets its trial's record file (and, in a local folder, its line of
    results.jsonl), so the grid does not train it again. The first test read and the wall
    time come along. How many were taken. Either place may be a local path or a URI."""
    from clinfo_ray.study.records import META_FILE, PROTOCOL, read_meta
    from clinfo_ray.study.rules import RULES_FILE

    folder = study_dir(study)
    published = study_records(study, read_records(loc.join(out, RESULTS_FILE)))
    have = {(r.setting, r.method, r.seed) for r in folder_records(folder)}
    taken = 0
    for record in published:
        key = (record.setting, record.method, record.seed)
        if record.protocol != PROTOCOL or key in have:
            continue
        run_dir = loc.join(
            folder, TRIALS_DIR, trial_name(record.method, record.seed, record.setting)
        )
        details = {"record": json.loads(record.to_json()), "adopted_from": str(out)}
        loc.write_text(loc.join(run_dir, RECORD_FILE), json.dumps(details) + "\n")
        if not loc.is_uri(folder):
            append_record(Path(folder) / RESULTS_FILE, record)
        taken += 1
    meta_path = loc.join(out, META_FILE)
    if taken and loc.is_file(meta_path):
        meta = read_meta(meta_path)
        first = meta.rules.get("first_test_read")
        rules = loc.join(folder, RULES_FILE)
        if first and not loc.is_file(rules):
            loc.write_text(rules, json.dumps(first, indent=2, sort_keys=True) + "\n")
        wall = loc.join(folder, WALL_FILE)
        if not loc.is_file(wall):
            loc.write_text(wall, json.dumps({"seconds": meta.wall_seconds}) + "\n")
    return taken


def folder_records(folder: str) -> list[TrialRecord]:
    """The records the study's folder holds: its results.jsonl, or in a bucket (where no
    file can be appended to) the record file of each of its trials, in the trials' order."""
    if not loc.is_uri(folder):
        return read_records(Path(folder) / RESULTS_FILE)
    records = []
    trials = loc.join(folder, TRIALS_DIR)
    for name in loc.list_names(trials):
        path = loc.join(trials, name, RECORD_FILE)
        if loc.is_file(path):
            records.append(TrialRecord.from_dict(json.loads(loc.read_text(path))["record"]))
    return records


def study_records(study: Study, records: list[TrialRecord]) -> list[TrialRecord]:
    """The study's records among ``records``: one per (setting, method, seed) of its grid (the
    last wins when a trial was evaluated twice), in the grid's order."""
    latest = {(r.setting, r.method, r.seed): r for r in records}
    keys = [(t["setting"], t["method"], t["seed"]) for t in study.grid()]
    return [latest[key] for key in keys if key in latest]
