"""A study trial's one evaluation: frozen features, the probe chosen by cross-validation, kNN.

The train split's validation rows (``data.val_fraction``) never reach training, and here they
choose nothing: the linear probe's setting (weight decay x epochs, the study's grid) is chosen
by k-fold cross-validation on the other train rows, the fitting rows, grouped as the validation
split is (:mod:`clinfo_ray.evaluation.probe_selection`). One probe with that setting, trained
on all the fitting rows, then scores the validation rows once and, when the study evaluates the
test split, the test rows once: the same classifier for both. kNN top-1 and retrieval by label
(recall@k, mAP@R; bank: the fitting rows) are reported beside it. The clusters the run trained
with are described by their information about the labels: I(Z;T) and H(Z|T) in bits, from the
run's starting table or its last k-means version.

Resources: the features are computed over Ray Data within what the trial's Train workers held
(:func:`trial_encoder_share`); the probe and kNN then run in one Ray task with resources of
their own (:func:`probe_task_resources`) on the device ``eval.device`` resolves to, never on
whatever the Tune trial actor (which holds no GPU) happens to see.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clinfo_ray.config import Device, EvalConfig, TrainConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import read_manifest
from clinfo_ray.data.splits import val_mask
from clinfo_ray.devices import faiss_gpu_count, ray_uses_gpu
from clinfo_ray.evaluation.features import extract_split_features
from clinfo_ray.evaluation.knn import knn_top1
from clinfo_ray.evaluation.linear_probe import Probe, train_probe
from clinfo_ray.evaluation.probe_selection import best_setting, cross_validate, probe_folds
from clinfo_ray.evaluation.retrieval import retrieval_metrics
from clinfo_ray.storage import location as loc
from clinfo_ray.study.spec import ProbeGrid

log = logging.getLogger(__name__)

CLUSTER_KEYS = ("num_clusters", "mutual_information_bits", "conditional_entropy_bits")
Labelled = tuple[np.ndarray, np.ndarray]  # features (n, D) float32, labels (n,) int64
RETRIEVAL_KS = (1, 5, 10)  # recall@k of each scored split, beside mAP@R

# A Train worker on GPUs holds one whole GPU (clinfo_ray/training/launch.py): the probe's share.
GPU_PER_WORKER = 1.0
# The CPU probe's steps are small matrix products (one thread below ~4M multiply-adds a step)
# and faiss's flat search gains little beyond a few threads: more CPUs would only be held idle.
PROBE_MAX_CPUS = 4.0


def cluster_information(
    run_dir: str | Path, start_stats: dict[str, Any] | None
) -> dict[str, float] | None:
    """I(Z;T), H(Z|T) and the cluster count of the clusters the run ended with: the last
    k-means version it published (iterative methods), else its starting table. ``run_dir``:
    a local path or a URI."""
    versions = [
        name
        for name in loc.list_names(loc.join(run_dir, "clusters"))
        if name.startswith("kmeans-v") and name.endswith(".stats.json")
    ]
    last = loc.join(run_dir, "clusters", max(versions)) if versions else None
    stats = json.loads(loc.read_text(last)) if last else start_stats
    if not stats or stats.get("mutual_information_bits") is None:
        return None
    return {key: float(stats[key]) for key in CLUSTER_KEYS}


def trial_encoder_share(cfg: TrainConfig) -> tuple[EvalConfig, float]:
    """The evaluation's encoder actors and CPUs each: within what the trial's own Train
    workers held (their CPUs; on GPUs one actor per worker's GPU), never the cluster's default
    (half its CPUs, or every GPU). Trials of a study evaluate while others train or evaluate;
    two evaluations each taking half the CPUs for actors left none for the decode tasks that
    feed them, and both waited for ever. ``eval.num_actors``, when set, is kept."""
    gpu = ray_uses_gpu(cfg.eval.device)
    actors = cfg.eval.num_actors or (cfg.run.num_workers if gpu else 1)
    cpus = cfg.run.num_workers * cfg.run.cpus_per_worker / actors
    return dataclasses.replace(cfg.eval, num_actors=actors), cpus


def probe_task_resources(cfg: TrainConfig, gpu: bool) -> dict[str, float]:
    """``num_cpus`` and ``num_gpus`` of the probe + kNN task. On a GPU (``gpu``: what
    ``eval.device`` resolved to): one Train worker's share, its GPU and its CPUs. On CPUs: the
    CPUs the trial's Train workers held together (free again once training has ended), at most
    :data:`PROBE_MAX_CPUS`."""
    if gpu:
        return {"num_cpus": cfg.run.cpus_per_worker, "num_gpus": GPU_PER_WORKER}
    held = cfg.run.num_workers * cfg.run.cpus_per_worker
    return {"num_cpus": min(held, PROBE_MAX_CPUS), "num_gpus": 0.0}


def probe_and_knn(
    fit: Labelled,
    folds: np.ndarray,
    scored: Mapping[str, Labelled],
    cfg: EvalConfig,
    grid: ProbeGrid,
    seed: int,
    *,
    gpu: bool,
) -> tuple[dict[str, Any], Probe]:
    """The probe chosen by cross-validation of ``grid``'s settings on ``fit`` over ``folds``
    ((n_fit,) int in 0..grid.folds-1) and trained on all of ``fit``, then each ``scored`` set's
    linear top-1/top-5, kNN top-1 and retrieval by label (recall@1/5/10, mAP@R; bank: ``fit``).
    Returns the scores (the ``scored`` sets by name, ``probe``, ``probe_grid``, ``device``) and
    the probe. ``gpu``: torch on CUDA, and
    faiss on a GPU when faiss sees one; else both on the CPU."""
    device = "cuda" if gpu else "cpu"
    knn_device: Device = "gpu" if gpu and faiss_gpu_count() > 0 else "cpu"
    tried = cross_validate(*fit, folds, cfg, grid.settings(), seed, device=device)
    best = best_setting(tried)
    chosen = dataclasses.replace(
        cfg, linear_weight_decay=best["weight_decay"], linear_epochs=best["epochs"]
    )
    probe = train_probe(*fit, chosen, seed, device=device)
    result: dict[str, Any] = {
        "probe": {
            "weight_decay": best["weight_decay"],
            "epochs": float(best["epochs"]),
            "train_top1": probe.train_top1,
            "cv_top1": best["cv_top1"],
            "folds": float(grid.folds),  # a float as every value of the record's probe
        },
        "probe_grid": tried,
        "device": {"probe": device, "knn": knn_device},
    }
    k, t = cfg.knn_k, cfg.knn_temperature
    for name, (x, y) in scored.items():
        linear = probe.score(x, y, name)
        knn = knn_top1(*fit, x, y, k, t, device=knn_device)
        result[name] = {"linear_top1": linear["top1"], "linear_top5": linear["top5"]}
        result[name]["knn_top1"] = knn
        # retrieval by label against the same bank: shown beside the scores, deciding nothing
        found = retrieval_metrics(*fit, x, y, RETRIEVAL_KS, device=knn_device)
        result[name].update({key: v for key, v in found.items() if key != "queries"})
    return result, probe


def _probe_task(
    fit: Labelled,
    folds: np.ndarray,
    scored: Mapping[str, Labelled],
    eval_settings: dict[str, Any],
    grid_settings: dict[str, Any],
    seed: int,
    gpu: bool,
    threads: int,
) -> dict[str, Any]:
    """The body of the Ray task: :func:`probe_and_knn`, and where it ran."""
    import faiss
    import ray
    import torch

    torch.set_num_threads(threads)  # within the task's CPUs, for torch's pool and faiss's
    faiss.omp_set_num_threads(threads)
    cfg = EvalConfig.from_mapping(eval_settings, "the study's probe task")
    grid = ProbeGrid(**grid_settings)
    result, _ = probe_and_knn(fit, folds, scored, cfg, grid, seed, gpu=gpu)
    context = ray.get_runtime_context()
    result["task"] = {
        "node_id": context.get_node_id(),
        "task_id": context.get_task_id(),
        "resources": context.get_assigned_resources(),
    }
    return result


def run_probe_task(
    fit: Labelled,
    folds: np.ndarray,
    scored: Mapping[str, Labelled],
    cfg: TrainConfig,
    grid: ProbeGrid,
    *,
    gpu: bool,
) -> dict[str, Any]:
    """:func:`probe_and_knn` in a Ray task holding :func:`probe_task_resources`; the features
    travel as numpy arrays through the object store. Needs a running Ray."""
    import ray

    resources = probe_task_resources(cfg, gpu)
    # "DEFAULT": outside the Tune trial's placement group (a study's trial actor holds a
    # 0.001-CPU bundle that no probe fits), from what the trial's Train workers freed
    task = ray.remote(_probe_task).options(**resources, scheduling_strategy="DEFAULT")
    threads = max(1, int(resources["num_cpus"]))
    ref = task.remote(
        ray.put(fit),
        folds,
        ray.put(dict(scored)),
        dataclasses.asdict(cfg.eval),
        dataclasses.asdict(grid),
        cfg.eval_seed,
        gpu,
        threads,
    )
    result: dict[str, Any] = ray.get(ref)
    return result


def evaluate_trial(
    cfg: TrainConfig,
    checkpoint: str | Path,
    grid: ProbeGrid,
    *,
    evaluate_test: bool,
) -> dict[str, Any]:
    """The trial's scores: ``val`` (and ``test`` when asked, else None) linear and kNN top-1;
    the chosen ``probe`` (weight decay, epochs, train and CV top-1, ``grid.folds``); every
    setting's CV scores (``probe_grid``); row counts; where the probe ran (``device``,
    ``task``); the seconds. Needs a running Ray (the features are computed over Ray Data)."""
    started = time.perf_counter()
    splits = (C.TRAIN, C.TEST) if evaluate_test else (C.TRAIN,)
    settings, cpus = trial_encoder_share(cfg)
    features = extract_split_features(
        checkpoint,
        cfg.data.dataset_dir,
        splits,
        settings,
        cpus_per_actor=cpus,
        label_column=cfg.data.label_column,
    )
    train = features[C.TRAIN]
    group = read_manifest(cfg.data.dataset_dir).val_group
    is_val = val_mask(list(train.ids), cfg.data.val_fraction, group)
    fit = (train.features[~is_val], train.labels[~is_val])
    scored = {"val": (train.features[is_val], train.labels[is_val])}
    if evaluate_test:
        scored["test"] = (features[C.TEST].features, features[C.TEST].labels)
    fold_of = probe_folds(list(train.ids[~is_val]), grid.folds, group)
    gpu = ray_uses_gpu(cfg.eval.device)
    result = run_probe_task(fit, fold_of, scored, cfg, grid, gpu=gpu)
    result["val"] = {k: result["val"][k] for k in ("linear_top1", "knn_top1")}
    result.setdefault("test", None)
    result["rows"] = {name: len(y) for name, (_, y) in [("fit", fit), *scored.items()]}
    result["seconds"] = time.perf_counter() - started
    log.info("study evaluation: %s", {k: result[k] for k in ("val", "test", "probe")})
    return result
