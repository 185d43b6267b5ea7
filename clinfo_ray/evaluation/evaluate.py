"""Evaluate one checkpoint: frozen features once, then the linear probe and weighted kNN.

The library call behind ``clinfo-ray eval`` and ``jobs/eval.py``. Results go to
``<out>/<checkpoint name>.json`` and to TensorBoard scalars ``eval/linear_top1``,
``eval/linear_top5``, ``eval/knn_top1`` in ``<out>`` at the checkpoint's epoch (so evaluating
several checkpoints of a run draws a curve). ``<out>`` defaults to ``<checkpoint>/../eval``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from clinfo_ray.checkpointing import read_checkpoint_state
from clinfo_ray.config import EvalConfig
from clinfo_ray.data import columns as C
from clinfo_ray.evaluation.features import extract_split_features
from clinfo_ray.evaluation.knn import knn_top1
from clinfo_ray.evaluation.linear_probe import linear_probe

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
SCALARS = {
    "linear_top1": "eval/linear_top1",
    "linear_top5": "eval/linear_top5",
    "knn_top1": "eval/knn_top1",
}  # result key -> TensorBoard tag


def default_out_dir(checkpoint_dir: str | Path) -> Path:
    """``<checkpoint>/../eval``: beside the run's checkpoints."""
    return Path(checkpoint_dir).resolve().parent / EVAL_DIR


def cluster_has_gpu() -> bool:
    """Whether the connected Ray cluster offers at least one GPU (False with no Ray running)."""
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1


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
    data_dir: str | Path | None = None,
    eval_cfg: EvalConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    batch_size: int = 256,
    use_gpu: bool | None = None,
    num_actors: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Linear probe and kNN top-1 of a checkpoint's frozen encoder features; writes the results.

    ``data_dir`` defaults to the checkpoint config's ``data.dataset_dir``; ``eval_cfg`` to its
    ``eval`` section. ``use_gpu``: feature extraction on GPU actors; ``None`` means "when the
    Ray cluster has a GPU". The probe and kNN run on the driver (its GPU when it has one).
    Accuracies are fractions of the labelled test rows; the dict also holds the row counts,
    timings, the eval config and ``json_path``.
    """
    checkpoint_dir = Path(checkpoint_dir).resolve()
    state = read_checkpoint_state(checkpoint_dir)
    config = state.train_config()
    eval_cfg = eval_cfg or config.eval
    data_dir = Path(data_dir or config.data.dataset_dir)
    use_gpu = cluster_has_gpu() if use_gpu is None else use_gpu
    started = time.perf_counter()
    splits = extract_split_features(
        checkpoint_dir, data_dir, batch_size=batch_size, use_gpu=use_gpu, num_actors=num_actors
    )
    (train_x, train_y, _), (test_x, test_y, _) = splits[C.TRAIN], splits[C.TEST]
    features_s = time.perf_counter() - started
    log.info("features: train %s, test %s (%.1f s)", train_x.shape, test_x.shape, features_s)
    probe = linear_probe(train_x, train_y, test_x, test_y, eval_cfg, seed=seed)
    started = time.perf_counter()
    knn = knn_top1(train_x, train_y, test_x, test_y, eval_cfg.knn_k, eval_cfg.knn_temperature)
    knn_s = time.perf_counter() - started
    result = {
        "checkpoint": str(checkpoint_dir),
        "data_dir": str(data_dir),
        "epoch": state.epoch,
        "step": state.step,
        "method": config.loss.method,
        "cluster_method": config.cluster_method,
        **_scores(probe, knn, train_y, test_y),
        "feature_dim": int(train_x.shape[1]),
        "seconds": {"features": features_s, "linear": probe["seconds"], "knn": knn_s},
        "feature_device": "gpu" if use_gpu else "cpu",
        "eval_config": dataclasses.asdict(eval_cfg),
    }
    out = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint_dir)
    result["json_path"] = str(out.resolve() / f"{checkpoint_dir.name}.json")
    write_results(result, Path(result["json_path"]))
    return result


def write_results(result: dict[str, Any], path: Path) -> None:
    """``result`` as JSON at ``path``; TensorBoard scalars in its folder at ``result["epoch"]``."""
    from torch.utils.tensorboard import SummaryWriter

    out_dir = path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    writer = SummaryWriter(log_dir=str(out_dir))
    try:
        for key, tag in SCALARS.items():
            writer.add_scalar(tag, float(result[key]), global_step=int(result["epoch"]))
    finally:
        writer.close()
    log.info("eval results: %s (TensorBoard: %s)", path, out_dir)
