"""MNIST and Fashion-MNIST from the standard idx files (``*-idx3-ubyte[.gz]``).

Debian's ``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``. Every
28×28 greyscale image is stored as a PNG (the dataset format holds encoded images). No tags:
these sets are for k-means clusters, throughput and scale.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from clinfo_ray.data import columns as C
from clinfo_ray.data.write.sources.source_table import PrepareError, SourceTable, table_from_columns

FILES = {
    C.TRAIN: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    C.TEST: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASS_NAMES = {
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "mnist": [str(d) for d in range(10)],
}


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise PrepareError(f"{folder}: {stem}[.gz] not found (apt-get install dataset-fashion-mnist)")


def read_idx(path: Path) -> np.ndarray:
    """An idx file as an array: magic 0x00 0x00 <type 0x08 = uint8> <ndim>, big-endian sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise PrepareError(f"{path}: not a uint8 idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise PrepareError(f"{path}: {len(body)} bytes of data for shape {shape}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def load_idx(folder: str | Path, *, name: str = "fashion-mnist") -> SourceTable:
    """Both splits of an idx dataset; ids are ``train/00000`` ... ``test/09999``."""
    folder = Path(folder)
    ids: list[str] = []
    splits: list[str] = []
    data: list[bytes | None] = []
    labels: list[int | None] = []
    for split, (image_stem, label_stem) in FILES.items():
        images = read_idx(_find(folder, image_stem))
        targets = read_idx(_find(folder, label_stem))
        if images.ndim != 3 or targets.shape != images.shape[:1]:
            raise PrepareError(f"{folder}: {split} images {images.shape}, labels {targets.shape}")
        ids += [f"{split}/{i:05d}" for i in range(len(images))]
        splits += [split] * len(images)
        data += [_png(img) for img in images]
        labels += [int(t) for t in targets]
    rows = table_from_columns(ids, splits, data=data, labels=labels)
    return SourceTable(rows, CLASS_NAMES.get(name, CLASS_NAMES["mnist"]))
