"""The decode step of the embedding path (:mod:`clinfo_ray.evaluation.embed`): rows of encoded
images -> (id, split, label, image_u8 (B, 3, S, S) uint8), in Ray Data's CPU tasks.

Apart from the encoder's module on purpose: it imports numpy, pyarrow and PIL only, so a decode
worker does not load torch (about 85 MiB resident instead of about 950 MiB on import).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from clinfo_ray.data import columns as C
from clinfo_ray.data.read.decode import decode_batch

log = logging.getLogger(__name__)

IMAGE_U8 = "image_u8"  # decoded images between the decode tasks and the actors
FOLDER_SPLIT = "images"  # the split of every image of ``--images FOLDER``


def _log_dropped(ok: np.ndarray, ids: np.ndarray, reasons: list[str]) -> None:
    if not ok.all():
        first = ids[~ok][0]
        log.warning("dropped %d undecodable image(s), e.g. %s: %s", (~ok).sum(), first, reasons[0])


class DecodeImages:
    """Ray Data transform: dataset rows -> (id, split, label, image_u8 (B, 3, S, S) uint8).

    ``label`` is the input's column ``label_column``, -1 where missing. Rows that fail to decode
    are dropped (and logged)."""

    def __init__(self, size: int, label_column: str = C.LABEL) -> None:
        self.size, self.label_column = size, label_column

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        images, ok, reasons = decode_batch(batch.column(C.IMAGE).to_pylist(), self.size)
        ids = np.asarray(batch.column(C.ID).to_pylist(), dtype=object)
        _log_dropped(ok, ids, reasons)
        labels = batch.column(self.label_column).combine_chunks().fill_null(-1)
        labels = labels.to_numpy(zero_copy_only=False)
        split = np.asarray(batch.column(C.SPLIT).to_pylist(), dtype=object)
        return {
            C.ID: ids[ok],
            C.LABEL: labels.astype(np.int64)[ok],
            C.SPLIT: split[ok],
            IMAGE_U8: images,
        }


class DecodeFiles:
    """Ray Data transform: ``read_binary_files`` rows (path, bytes) -> the columns of
    :class:`DecodeImages`; the id is the path relative to ``root``, the split
    :data:`FOLDER_SPLIT`, the label -1 (none)."""

    def __init__(self, size: int, root: str) -> None:
        self.size, self.prefix = size, root.rstrip("/") + "/"

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        images, ok, reasons = decode_batch(batch.column("bytes").to_pylist(), self.size)
        paths = batch.column("path").to_pylist()
        ids = np.asarray([p.removeprefix(self.prefix) for p in paths], dtype=object)
        _log_dropped(ok, ids, reasons)
        n = int(ok.sum())
        return {
            C.ID: ids[ok],
            C.LABEL: np.full(n, -1, dtype=np.int64),
            C.SPLIT: np.full(n, FOLDER_SPLIT, dtype=object),
            IMAGE_U8: images,
        }
