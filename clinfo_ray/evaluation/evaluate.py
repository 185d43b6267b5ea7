"""Evaluate one checkpoint: frozen features once, then the linear probe and weighted kNN.

The library call behind ``clinfo-ray eval`` and ``jobs/eval.py``. Results go to
``<out>/<checkpoint name>.json`` and to TensorBoard scalars ``eval/linear_top1``,
``eval/linear_top5``, ``eval/knn_top1`` in ``<out>`` at the checkpoint's epoch (so evaluating
several checkpoints of a run draws a curve). ``<out>`` defaults to ``<checkpoint>/../eval``.
The checkpoint, the dataset and ``<out>`` may be local folders or URIs (``s3://...``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from clinfo_ray.checkpointing import read_checkpoint_state
from clinfo_ray.config import TrainConfig
from clinfo_ray.data import columns as C
from clinfo_ray.devices import ray_uses_gpu
from clinfo_ray.evaluation.features import extract_split_features
from clinfo_ray.evaluation.knn import knn_top1
from clinfo_ray.evaluation.linear_probe import train_probe
from clinfo_ray.evaluation.retrieval import retrieval_metrics
from clinfo_ray.storage import location as loc

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
SCALARS = {
    "linear_top1": "eval/linear_top1",
    "linear_top5": "eval/linear_top5",
    "knn_top1": "eval/knn_top1",
    "recall_at_1": "eval/recall_at_1",
    "map_at_r": "eval/map_at_r",
}  # result key -> TensorBoard tag


def default_out_dir(checkpoint_dir: str | Path) -> str:
    """``<checkpoint>/../eval``: beside the run's checkpoints (a URI for a run in a bucket)."""
    return loc.join(loc.parent(loc.absolute(checkpoint_dir)), EVAL_DIR)


def _scores(
    probe: dict[str, Any], knn: float, train_y: np.ndarray, test_y: np.ndarray
) -> dict[str, Any]:
    return {
        "linear_top1": probe["top1"],
        "linear_top5": probe["top5"],
        "linear_train_top1": probe["train_top1"],
        "knn_top1": knn,
        "num_classes": probe["num_classes"],
        "train_rows": len(train_y),
        "test_rows": len(test_y),
        "train_labelled": int((train_y >= 0).sum()),
        "test_labelled": int((test_y >= 0).sum()),
    }


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Linear probe, kNN top-1 and retrieval by label (recall@1/5/10, mAP@R) of a checkpoint's
    frozen encoder features; writes the results.

    ``config`` defaults to the checkpoint's own; its ``data.dataset_dir`` is the dataset,
    ``data.label_column`` the label, its ``eval`` section the settings (feature extraction:
    ``batch_size``, ``device``, ``num_actors``; the probe: ``linear_*``, seeded by
    ``eval.seed`` else ``run.seed``; kNN: ``knn_*``). The probe and kNN run on the driver (its
    GPU when it has one). Accuracies are fractions of the labelled test rows; the dict also
    holds the row counts, timings, the eval and label column and ``json_path``.
    """
    checkpoint_dir = loc.absolute(checkpoint_dir)
    state = read_checkpoint_state(checkpoint_dir)
    config = config or state.train_config()
    eval_cfg = config.eval
    data_dir = config.data.dataset_dir
    started = time.perf_counter()
    splits = extract_split_features(
        checkpoint_dir, data_dir, C.SPLITS, eval_cfg, label_column=config.data.label_column
    )
    (train_x, train_y, _), (test_x, test_y, _) = splits[C.TRAIN], splits[C.TEST]
    features_s = time.perf_counter() - started
    log.info("features: train %s, test %s (%.1f s)", train_x.shape, test_x.shape, features_s)
    trained = train_probe(train_x, train_y, eval_cfg, seed=config.eval_seed)
    probe = {**trained.score(test_x, test_y, "test"), "seconds": trained.seconds}
    probe.update(train_top1=trained.train_top1, num_classes=trained.num_classes)
    started = time.perf_counter()
    knn = knn_top1(train_x, train_y, test_x, test_y, eval_cfg.knn_k, eval_cfg.knn_temperature)
    # retrieval of the training rows by label, beside kNN: recall@1/5/10 and mAP@R
    retrieval = retrieval_metrics(train_x, train_y, test_x, test_y, (1, 5, 10))
    knn_s = time.perf_counter() - started
    result = {
        "checkpoint": checkpoint_dir,
        "data_dir": data_dir,
        "label_column": config.data.label_column,
        "epoch": state.epoch,
        "step": state.step,
        "method": config.loss.method,
        "cluster_method": config.cluster_method,
        **_scores(probe, knn, train_y, test_y),
        **{key: v for key, v in retrieval.items() if key != "queries"},
        "feature_dim": int(train_x.shape[1]),
        "seconds": {"features": features_s, "linear": probe["seconds"], "knn": knn_s},
        "feature_device": "gpu" if ray_uses_gpu(eval_cfg.device) else "cpu",
        "eval_config": dataclasses.asdict(eval_cfg),
    }
    out = loc.absolute(out_dir) if out_dir is not None else default_out_dir(checkpoint_dir)
    result["json_path"] = loc.join(out, f"{loc.name(checkpoint_dir)}.json")
    write_results(result, result["json_path"])
    return result


def write_results(result: dict[str, Any], path: str | Path) -> None:
    """``result`` as JSON at ``path``; TensorBoard scalars in its folder at ``result["epoch"]``
    (a folder in a bucket gets them written locally, then uploaded)."""
    from torch.utils.tensorboard import SummaryWriter

    out_dir = loc.parent(path)
    loc.write_text(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    with tempfile.TemporaryDirectory(prefix="clinfo-ray-eval-") as tmp:
        events = tmp if loc.is_uri(out_dir) else out_dir
        writer = SummaryWriter(log_dir=events)
        try:
            for key, tag in SCALARS.items():
                writer.add_scalar(tag, float(result[key]), global_step=int(result["epoch"]))
        finally:
            writer.close()
        if events != out_dir:
            loc.upload_dir(events, out_dir)
    log.info("eval results: %s (TensorBoard: %s)", path, out_dir)
