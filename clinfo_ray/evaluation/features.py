"""Frozen encoder features of a checkpoint on some splits of a dataset, gathered on the driver
for the linear probe, the kNN and k-means.

The rows come from the one embedding path (:mod:`clinfo_ray.evaluation.embed`: decode in CPU
tasks, a checkpoint's encoder in an actor pool) that ``clinfo-ray embed`` writes to Parquet;
here they are gathered, split apart and sorted by id. The label is the column ``label_column``
names (data.label_column: ``label`` or ``coarse_label``), handed on as ``label`` whichever it
is, -1 where an image has none. ``output="projections"``: the L2-normalised projection-head
output instead of the encoder features (what k-means clusters of a checkpoint use).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import ray

from clinfo_ray.config import EvalConfig
from clinfo_ray.data import columns as C
from clinfo_ray.evaluation.decode_rows import DecodeImages
from clinfo_ray.evaluation.embed import (
    EMBEDDING,
    DatasetImages,
    embedding_dataset,
    embedding_matrix,
)
from clinfo_ray.evaluation.encoder_source import CheckpointEncoder, check_checkpoint

__all__ = ["DecodeImages", "SplitFeatures", "check_checkpoint", "extract_split_features"]

log = logging.getLogger(__name__)


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
    ``device`` of the actors, ``num_actors`` (default: one per GPU, else half the CPUs; on GPUs
    one GPU each). Needs a running Ray."""
    settings = settings or EvalConfig()
    encoder = CheckpointEncoder.checked(checkpoint_dir, output)
    images = DatasetImages.checked(data_dir, splits, label_column)
    ds = embedding_dataset(images, encoder, settings, cpus_per_actor=cpus_per_actor)
    result = _collect(ds, splits)
    for split, rows in images.input_rows().items():
        if rows != len(result[split].ids):
            log.warning(
                "%s: %d of %d images undecodable", split, rows - len(result[split].ids), rows
            )
    return result


def _collect(ds: ray.data.Dataset, splits: Sequence[str]) -> dict[str, SplitFeatures]:
    """Concatenate the stream's batches on the driver, separate the splits, sort by id."""
    batches = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    table = pa.concat_tables(batches) if batches else None
    if table is None or table.num_rows == 0:
        raise ValueError(f"no decodable images in split(s) {list(splits)}")
    ids = np.asarray(table.column(C.ID).to_pylist(), dtype=object).astype(str)
    split_of = np.asarray(table.column(C.SPLIT).to_pylist(), dtype=object).astype(str)
    labels = table.column(C.LABEL).fill_null(-1).to_numpy().astype(np.int64)
    features = embedding_matrix(table.column(EMBEDDING))  # (n, D) float32
    result = {}
    for split in splits:
        rows = np.flatnonzero(split_of == split)
        rows = rows[np.argsort(ids[rows], kind="stable")]
        result[split] = SplitFeatures(
            np.ascontiguousarray(features[rows]), labels[rows], ids[rows].astype(object)
        )
    return result
