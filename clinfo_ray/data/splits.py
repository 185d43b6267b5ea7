"""The validation split: a fixed share of the train split, carved by a salted hash of the id.

Every selection (online kNN, Tune's metric, the demo's picks) reads the validation rows; the
test split is read only by the final evaluation. Which train rows are validation rows depends on
the image id alone, never on ``run.seed``, the number of workers or the row order: a run, its
resumption and a sweep all hold out the same images.

The hash is SHA-1 of ``"clinfo-ray-val:" + id``, its first 8 bytes read as a big-endian
fraction in [0, 1); a row is a validation row when that fraction is below ``fraction``. The salt
differs from the train/test split's (``hash_split``'s ``"clinfo-ray:"``), so the two draws are
independent: a source split by id does not put its validation rows near its test boundary.
About 0.5 s per 10^6 ids (a Python loop over hashlib, measured on one core).

Grouping (``val_group``, from the dataset's manifest): ``id`` hashes each id alone;
``id_suffix`` hashes the part of the id after its first ``/``, so rows sharing it fall on the
same side. The multi-style emoji set uses it: ``google/1F600`` and ``apple/1F600`` are one
emoji, and its test split is drawn per emoji, so the validation split must be too (otherwise a
validation emoji's other renderings train, and validation scores run higher than test ones).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

VAL_SALT = "clinfo-ray-val"


def val_fraction_of(ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """(n,) float64 in [0, 1): the salted hash of each id, uniform over ids."""
    values = ids.to_pylist() if isinstance(ids, pa.Array | pa.ChunkedArray) else list(ids)
    if any(v is None for v in values):
        raise ValueError("ids must not be null")
    digests = b"".join([hashlib.sha1(f"{VAL_SALT}:{v}".encode()).digest()[:8] for v in values])
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64


VAL_GROUPS = ("id", "id_suffix")


def group_keys(ids: Sequence[str], group: str) -> list[str]:
    """What the validation hash reads of each id under ``group`` (see the module's text)."""
    if group == "id":
        return list(ids)
    if group == "id_suffix":
        return [i.split("/", 1)[-1] for i in ids]
    raise ValueError(f"val_group must be one of {VAL_GROUPS}, got {group!r}")


def val_mask(
    ids: pa.Array | pa.ChunkedArray | Sequence[str], fraction: float, group: str = "id"
) -> np.ndarray:
    """(n,) bool, True where the row with that id is a validation row (``data.val_fraction``).

    ids: the image ids (the dataset's ``id`` column) of train rows; fraction in [0, 1): 0 gives
    no validation rows. Deterministic: the same id gives the same answer in any call, order or
    process, and a larger fraction only adds rows. ``group``: ``id`` or ``id_suffix`` (rows
    whose ids share the part after the first ``/`` are on the same side).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    values = ids.to_pylist() if isinstance(ids, pa.Array | pa.ChunkedArray) else list(ids)
    return val_fraction_of(group_keys(values, group)) < fraction
