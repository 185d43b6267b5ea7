"""Read the metadata columns of a clinfo-ray dataset (never the image bytes)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import check_format_version
from clinfo_ray.storage import location as loc

from .statistics import UNLABELLED


def parquet_files(data_dir: str | Path) -> list[str]:
    """The dataset's Parquet shards, sorted (paths, or URIs for a folder named by one); an
    error when `data_dir` is not a dataset (of this format version)."""
    root = str(data_dir)
    try:
        manifest = json.loads(loc.read_text(loc.join(root, C.MANIFEST)))
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(
            f"{root} is not a clinfo-ray dataset: no {C.MANIFEST} in it"
        ) from None
    check_format_version(manifest.get("format_version"), root)
    files = loc.list_files(root, ".parquet")
    if not files:
        raise FileNotFoundError(f"{root} holds a {C.MANIFEST} but no .parquet shards")
    return files


def read_metadata(
    data_dir: str | Path, columns: Sequence[str], *, label_column: str = C.LABEL
) -> pa.Table:
    """The named columns of every row of the dataset, in shard order. ``label_column``
    (data.label_column) is read where ``columns`` names C.LABEL, and comes back under that
    name: the readers of the downstream label need not know which column it is."""
    wanted = list(columns)
    swap = label_column != C.LABEL and C.LABEL in wanted
    if swap and label_column in wanted:
        raise ValueError(f"columns name both {C.LABEL!r} and {label_column!r}, which stands for it")
    columns = [label_column if swap and c == C.LABEL else c for c in wanted]
    unknown = sorted(set(columns) - set(C.SCHEMA.names))
    files = parquet_files(data_dir)
    filesystem, paths = loc.resolve_files(files)
    dataset = pads.dataset(paths, format="parquet", filesystem=filesystem)
    missing = sorted(set(columns) - set(dataset.schema.names))
    if missing:
        hint = f" (the dataset format has no column {unknown[0]!r})" if unknown else ""
        raise KeyError(f"{data_dir}: the dataset has no column {missing[0]!r}{hint}")
    table = dataset.to_table(columns=columns)
    return table.rename_columns(wanted) if swap else table


def train_mask(table: pa.Table) -> np.ndarray:
    """(n,) bool: which rows belong to the train split."""
    return np.asarray(table[C.SPLIT].to_numpy(zero_copy_only=False) == C.TRAIN, dtype=bool)


def label_codes(column: pa.ChunkedArray) -> np.ndarray:
    """(n,) int64 codes of a label-like column, UNLABELLED (-1) where it is null.

    Integer columns keep their values (shifted to stay >= 0 when a value is negative); other
    types are coded by their sorted distinct values.
    """
    values = column.to_numpy(zero_copy_only=False)
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    codes = np.full(len(column), UNLABELLED, dtype=np.int64)
    if valid.any():
        codes[valid] = np.unique(values[valid], return_inverse=True)[1]
    return codes
