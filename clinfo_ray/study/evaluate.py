"""A study trial's one evaluation: frozen features, the probe chosen on validation, kNN.

The train split's validation rows (``data.val_fraction``) never reach training; here they score
every linear-probe setting of the study's grid (weight decay x epochs), trained on the other
train rows with standardised features. The best setting on validation is kept and, when the
study evaluates the test split, that same probe (same rows, same seed, so the same weights)
scores the test split once. kNN top-1 (bank: the same train rows) is reported beside it on both
splits. The clusters the run trained with are described by their information about the labels:
I(Z;T) and H(Z|T) in bits, from the run's starting table or its last k-means version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from clinfo_ray.config import EvalConfig, TrainConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import read_manifest
from clinfo_ray.data.splits import val_mask
from clinfo_ray.devices import ray_uses_gpu
from clinfo_ray.evaluation.features import extract_split_features
from clinfo_ray.evaluation.knn import knn_top1
from clinfo_ray.evaluation.linear_probe import linear_probe
from clinfo_ray.study.spec import ProbeGrid

log = logging.getLogger(__name__)

CLUSTER_KEYS = ("num_clusters", "mutual_information_bits", "conditional_entropy_bits")


def choose_probe(
    fit: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    grid: ProbeGrid,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train the probe of every grid setting on ``fit`` and score it on ``val``; the best
    setting (ties: the first tried) and every setting's scores."""
    tried = []
    for weight_decay, epochs in grid.settings():
        settings = dataclasses.replace(
            cfg.eval, linear_weight_decay=weight_decay, linear_epochs=epochs
        )
        scores = linear_probe(*fit, *val, settings, seed=cfg.eval_seed)
        tried.append(
            {
                "weight_decay": weight_decay,
                "epochs": epochs,
                "val_top1": scores["top1"],
                "train_top1": scores["train_top1"],
            }
        )
    best = max(tried, key=lambda t: t["val_top1"])  # max keeps the first of equals
    return best, tried


def cluster_information(
    run_dir: Path, start_stats: dict[str, Any] | None
) -> dict[str, float] | None:
    """I(Z;T), H(Z|T) and the cluster count of the clusters the run ended with: the last
    k-means version it published (iterative methods), else its starting table."""
    versions = sorted((run_dir / "clusters").glob("kmeans-v*.stats.json"))
    stats = json.loads(versions[-1].read_text()) if versions else start_stats
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


def evaluate_trial(
    cfg: TrainConfig,
    checkpoint: Path,
    grid: ProbeGrid,
    *,
    evaluate_test: bool,
) -> dict[str, Any]:
    """The trial's scores: ``val`` (and ``test`` when asked) linear and kNN top-1, and the
    chosen probe. Needs a running Ray (the features are computed over Ray Data)."""
    started = time.perf_counter()
    splits = (C.TRAIN, C.TEST) if evaluate_test else (C.TRAIN,)
    settings, cpus = trial_encoder_share(cfg)
    features = extract_split_features(
        checkpoint, cfg.data.dataset_dir, splits, settings, cpus_per_actor=cpus
    )
    train = features[C.TRAIN]
    group = read_manifest(cfg.data.dataset_dir).val_group
    is_val = val_mask(list(train.ids), cfg.data.val_fraction, group)
    fit = (train.features[~is_val], train.labels[~is_val])
    val = (train.features[is_val], train.labels[is_val])
    best, tried = choose_probe(fit, val, cfg, grid)
    k, t = cfg.eval.knn_k, cfg.eval.knn_temperature
    result: dict[str, Any] = {
        "val": {"linear_top1": best["val_top1"], "knn_top1": knn_top1(*fit, *val, k, t)},
        "test": None,
        "probe": {
            "weight_decay": best["weight_decay"],
            "epochs": float(best["epochs"]),
            "train_top1": best["train_top1"],
        },
        "probe_grid": tried,
        "rows": {"fit": len(fit[1]), "val": len(val[1])},
    }
    if evaluate_test:
        test = features[C.TEST]
        settings = dataclasses.replace(
            cfg.eval, linear_weight_decay=best["weight_decay"], linear_epochs=best["epochs"]
        )
        probe = linear_probe(*fit, test.features, test.labels, settings, seed=cfg.eval_seed)
        result["test"] = {
            "linear_top1": probe["top1"],
            "linear_top5": probe["top5"],
            "knn_top1": knn_top1(*fit, test.features, test.labels, k, t),
        }
        result["rows"]["test"] = len(test.labels)
    result["seconds"] = time.perf_counter() - started
    log.info("study evaluation: %s", {k: result[k] for k in ("val", "test", "probe")})
    return result
