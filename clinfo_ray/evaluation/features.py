"""Frozen encoder features of one split, computed once over Ray Data.

    Parquet (id, image, label) -> DecodeImages (CPU tasks) -> EncodeImages (actor pool) -> driver

The label is the column ``label_column`` names (data.label_column: ``label`` or
``coarse_label``), handed on as ``label`` whichever it is.

Images are decoded at the checkpoint's ``data.image_size`` (shorter side resized, centre
square: the same decode the training stream uses, without any augmentation), scaled to [0, 1]
as training feeds them, and passed through the encoder only (``model.encode``: before the
projection head) in eval mode, so BatchNorm uses its running statistics and a row's features do
not depend on the rest of its batch. With ``output="projections"`` the actors return the
L2-normalised projection-head output instead (what k-means clusters of a checkpoint use). Each
actor of the pool loads the checkpoint once; the checkpoint and dataset paths must be readable on
every node (shared storage on a cluster).
Decoding runs in separate CPU tasks so GPU actors are not left waiting on PIL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import ray
import torch
import torch.nn.functional as F

from clinfo_ray.checkpointing import (
    CheckpointError,
    load_model_from_checkpoint,
    read_checkpoint_state,
)
from clinfo_ray.config import EvalConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import read_manifest, split_files
from clinfo_ray.data.read.decode import decode_batch
from clinfo_ray.devices import ray_uses_gpu

log = logging.getLogger(__name__)

FEATURES, IMAGE_U8 = "features", "image_u8"
# What the encoder actors return: encoder features, or L2-normalised projection-head output.
OUTPUTS = ("features", "projections")
MODEL_FILE = "model.pt"  # the weights file of a checkpoint directory (clinfo_ray.checkpointing)


class DecodeImages:
    """Ray Data transform: encoded images -> (id, label, split, image_u8 (B, 3, S, S) uint8).

    ``label`` is the input's column ``label_column``. Rows that fail to decode are dropped (and
    logged); a missing label becomes -1.
    """

    def __init__(self, size: int, label_column: str = C.LABEL) -> None:
        self.size, self.label_column = size, label_column

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        images, ok, reasons = decode_batch(batch.column(C.IMAGE).to_pylist(), self.size)
        ids = np.asarray(batch.column(C.ID).to_pylist(), dtype=object)
        if not ok.all():
            log.warning("dropped %d undecodable image(s), e.g. %s", (~ok).sum(), reasons[0])
        labels = batch.column(self.label_column).combine_chunks().fill_null(-1)
        labels = labels.to_numpy(zero_copy_only=False)
        split = np.asarray(batch.column(C.SPLIT).to_pylist(), dtype=object)
        return {
            C.ID: ids[ok],
            C.LABEL: labels.astype(np.int64)[ok],
            C.SPLIT: split[ok],
            IMAGE_U8: images,
        }


class EncodeImages:
    """Ray Data actor: decoded images -> (B, D) float32 in column ``features``: encoder features,
    or with ``output="projections"`` the L2-normalised head output (B, P). The model is loaded
    from the checkpoint once, when the actor starts."""

    def __init__(
        self, checkpoint_dir: str, use_gpu: bool, threads: int, output: str = "features"
    ) -> None:
        _check_output(output)
        if not use_gpu:
            torch.set_num_threads(threads)
        self.output = output
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model, _ = load_model_from_checkpoint(checkpoint_dir, map_location=self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(batch.pop(IMAGE_U8)))
        with torch.inference_mode():
            x = images.to(self.device, non_blocking=True).float().div_(255.0)  # (B, 3, S, S)
            if self.output == "projections":
                vectors = F.normalize(self.model(x).projections.float(), dim=-1)  # (B, P)
            else:
                vectors = self.model.encode(x).float()  # (B, D)
        return {**batch, FEATURES: vectors.cpu().numpy()}


def check_checkpoint(checkpoint_dir: str | Path) -> int:
    """The checkpoint's ``data.image_size``, after checking on the driver that the directory is
    a complete checkpoint (state.json and weights): a missing file fails here, with one line
    naming the path, rather than inside every actor of the pool."""
    size = read_checkpoint_state(checkpoint_dir).train_config().data.image_size
    if not (Path(checkpoint_dir) / MODEL_FILE).is_file():
        raise CheckpointError(f"not a complete checkpoint: {checkpoint_dir} has no {MODEL_FILE}")
    return size


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")


def default_num_actors(use_gpu: bool) -> int:
    """One actor per GPU of the cluster; on CPUs, half the cluster's CPUs (decoding gets the
    rest), at least one."""
    resources = ray.cluster_resources()
    if use_gpu:
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1)) // 2)


class SplitFeatures(NamedTuple):
    """One split's frozen features, rows sorted by image id."""

    features: np.ndarray  # (n, D) float32: encoder output (or normalised projections)
    labels: np.ndarray  # (n,) int64, -1 where the image has no label
    ids: np.ndarray  # (n,) str objects


def extract_split_features(
    checkpoint_dir: str | Path,
    data_dir: str | Path,
    splits: Sequence[str] = C.SPLITS,
    settings: EvalConfig | None = None,
    *,
    cpus_per_actor: float = 1.0,
    output: str = "features",
    label_column: str = C.LABEL,
) -> dict[str, SplitFeatures]:
    """Encoder features of every decodable image of ``splits``, in one pass over Ray Data (the
    actors load the model once for all splits). ``output="projections"``: the L2-normalised
    projection-head output instead. The labels are the column ``label_column`` names
    (``cfg.data.label_column``). From ``settings``: ``batch_size`` images per encoder call,
    ``device`` of the actors, ``num_actors`` (default :func:`default_num_actors`; on GPUs one
    GPU each). Needs a running Ray."""
    _check_output(output)
    settings = settings or EvalConfig()
    size = check_checkpoint(checkpoint_dir)
    checkpoint_dir = Path(checkpoint_dir).resolve()
    use_gpu = ray_uses_gpu(settings.device)
    files = [f for split in splits for f in split_files(data_dir, split)]
    num_actors = settings.num_actors or default_num_actors(use_gpu)
    batch_size = settings.batch_size
    ds = ray.data.read_parquet(files).select_columns([C.ID, C.IMAGE, label_column, C.SPLIT])
    decode = DecodeImages(size, label_column)
    ds = ds.map_batches(decode, batch_size=batch_size, batch_format="pyarrow")
    ds = ds.map_batches(
        EncodeImages,
        fn_constructor_kwargs={
            "checkpoint_dir": str(checkpoint_dir),
            "use_gpu": use_gpu,
            "threads": max(1, int(cpus_per_actor)),
            "output": output,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if use_gpu else 0,
        num_cpus=cpus_per_actor,
    )
    result = _collect(ds, splits)
    rows = read_manifest(data_dir).rows
    for split, part in result.items():
        if rows.get(split, len(part.ids)) != len(part.ids):
            log.warning(
                "%s: %d of %d images undecodable", split, rows[split] - len(part.ids), rows[split]
            )
    return result


def _collect(ds: Any, splits: Sequence[str]) -> dict[str, SplitFeatures]:
    """Concatenate the stream's batches on the driver, separate the splits, sort by id."""
    parts: dict[str, list[np.ndarray]] = {C.ID: [], C.LABEL: [], C.SPLIT: [], FEATURES: []}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for key, chunks in parts.items():
            chunks.append(batch[key])
    if not parts[C.ID]:
        raise ValueError(f"no decodable images in split(s) {list(splits)}")
    ids = np.concatenate(parts[C.ID]).astype(str)
    split_of = np.concatenate(parts[C.SPLIT]).astype(str)
    labels = np.concatenate(parts[C.LABEL]).astype(np.int64)
    features = np.concatenate(parts[FEATURES]).astype(np.float32, copy=False)
    result = {}
    for split in splits:
        rows = np.flatnonzero(split_of == split)
        rows = rows[np.argsort(ids[rows], kind="stable")]
        result[split] = SplitFeatures(
            np.ascontiguousarray(features[rows]), labels[rows], ids[rows].astype(object)
        )
    return result
