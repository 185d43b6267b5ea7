"""Nearest neighbours of test images among training images, drawn as one picture.

For N query images of a dataset's test split (drawn with ``numpy.random.default_rng(seed)`` from
the labelled test rows every embedding set has, in id order), each embedding set finds the K
most cosine-similar training images (faiss ``IndexFlatIP`` on L2-normalised embeddings, exact;
on a GPU when faiss has one). The picture has one row per query: the query, then each set's K
neighbours, every neighbour framed green when its label is the query's and red when not, so
several methods compare on the same queries. Embeddings are the Parquet shards ``clinfo-ray
embed`` writes (columns ``id`` and ``embedding``); splits, labels and images come from the
dataset itself. The picture is drawn on a bare Agg canvas without the PNG "Software" field: the
same inputs give the same bytes. No Ray.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from clinfo_ray.config import Device
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import read_manifest, split_files
from clinfo_ray.data.read.decode import decode_image
from clinfo_ray.devices import faiss_gpu_count
from clinfo_ray.evaluation.knn import flat_index, l2_normalize
from clinfo_ray.storage import location as loc

EMBEDDING = "embedding"
MATCH, MISMATCH, QUERY = "#2ca02c", "#d62728", "#000000"
_CELL = 0.9  # inches a thumbnail
_DPI = 80


class NeighborsError(ValueError):
    """Input the picture cannot be made from (the message names the file or folder)."""


@dataclass(frozen=True)
class EmbeddingSet:
    """One folder of embeddings: its name on the picture, ids (n,) and vectors (n, D)."""

    name: str
    ids: np.ndarray
    vectors: np.ndarray


def read_embeddings(folder: str | Path, name: str | None = None) -> EmbeddingSet:
    """Every ``*.parquet`` shard under ``folder`` (a local path or a URI; columns ``id``,
    ``embedding``)."""
    shards = loc.list_files(folder, ".parquet")
    if not shards:
        raise NeighborsError(f"{folder}: no embeddings (*.parquet shards of clinfo-ray embed)")
    filesystem, paths = loc.resolve_files(shards)
    try:
        table = pa.concat_tables(
            pq.read_table(path, columns=[C.ID, EMBEDDING], filesystem=filesystem) for path in paths
        )
    except (pa.ArrowInvalid, KeyError) as err:
        raise NeighborsError(
            f"{folder}: not embeddings with columns id, embedding ({err})"
        ) from err
    vectors = np.stack(table[EMBEDDING].to_numpy(zero_copy_only=False)).astype(np.float32)
    ids = np.asarray(table[C.ID].to_pylist(), dtype=object)
    return EmbeddingSet(name or loc.name(str(folder).rstrip("/")), ids, vectors)


def _metadata(dataset: str | Path, label_column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids, splits and labels (-1: none) of every row of the dataset (no image bytes read)."""
    try:
        read_manifest(dataset)
    except (FileNotFoundError, ValueError) as err:
        raise NeighborsError(str(err)) from err
    table = _dataset(dataset).to_table(columns=[C.ID, C.SPLIT, label_column])
    labels = table[label_column].fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    ids = np.asarray(table[C.ID].to_pylist(), dtype=object)
    return ids, np.asarray(table[C.SPLIT].to_pylist(), dtype=object), labels


def _dataset(dataset: str | Path) -> ds.Dataset:
    """Every split's shards of a prepared dataset (a local path or a URI), as one dataset."""
    files = [f for split in C.SPLITS for f in split_files(dataset, split)]
    filesystem, paths = loc.resolve_files(files)
    return ds.dataset(paths, format="parquet", filesystem=filesystem)


def _images(dataset: str | Path, ids: Sequence[str], size: int) -> dict[str, np.ndarray]:
    """(size, size, 3) uint8 thumbnails of the rows with these ids, decoded as training does."""
    wanted = pa.array(sorted(set(ids)), pa.string())
    table = _dataset(dataset).to_table(columns=[C.ID, C.IMAGE], filter=pc.field(C.ID).isin(wanted))
    return {
        i: decode_image(blob, size).transpose(1, 2, 0)
        for i, blob in zip(table[C.ID].to_pylist(), table[C.IMAGE].to_pylist(), strict=True)
    }


def _search(train: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    device: Device = "gpu" if faiss_gpu_count() > 0 else "cpu"
    _, found = flat_index(l2_normalize(train), k, device).search(l2_normalize(queries), k)
    return np.asarray(found)  # (N, k)


def nearest_neighbors(
    sets: Sequence[EmbeddingSet],
    dataset: str | Path,
    *,
    queries: int = 8,
    k: int = 5,
    seed: int = 0,
    label_column: str = C.LABEL,
) -> tuple[list[str], dict[str, list[list[str]]], dict[str, int]]:
    """The query ids, each set's K neighbour ids per query, and every shown row's label."""
    ids, splits, labels = _metadata(dataset, label_column)
    label_of = dict(zip(ids, labels, strict=True))
    split_of = dict(zip(ids, splits, strict=True))
    common = set.intersection(*(set(s.ids) for s in sets))
    candidates = sorted(i for i in common if split_of.get(i) == C.TEST and label_of[i] >= 0)
    if len(candidates) < queries:
        raise NeighborsError(
            f"{dataset}: {len(candidates)} labelled test images have embeddings in every set, "
            f"{queries} queries asked"
        )
    draw = np.random.default_rng(seed).choice(len(candidates), queries, replace=False)
    chosen = [candidates[j] for j in sorted(draw)]
    found: dict[str, list[list[str]]] = {}
    for s in sets:
        row = {i: j for j, i in enumerate(s.ids)}
        train = np.array([j for j, i in enumerate(s.ids) if split_of.get(i) == C.TRAIN])
        if len(train) < k:
            raise NeighborsError(f"{s.name}: {len(train)} training images embedded, k = {k}")
        hits = _search(s.vectors[train], s.vectors[[row[q] for q in chosen]], k)
        found[s.name] = [[str(s.ids[train[h]]) for h in hit] for hit in hits]
    shown = set(chosen) | {i for rows in found.values() for r in rows for i in r}
    return chosen, found, {i: int(label_of[i]) for i in shown}


def draw_neighbors(
    sets: Sequence[EmbeddingSet],
    dataset: str | Path,
    out: str | Path,
    *,
    queries: int = 8,
    k: int = 5,
    seed: int = 0,
    label_column: str = C.LABEL,
    size: int = 64,
) -> dict[str, float]:
    """Write the picture to ``out`` (PNG); each set's share of neighbours with the query's
    label (the picture's green frames), by set name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen, found, labels = nearest_neighbors(
        sets, dataset, queries=queries, k=k, seed=seed, label_column=label_column
    )
    images = _images(dataset, list(labels), size)
    columns = 1 + len(sets) * (k + 1)  # the query, then each set's neighbours after a gap
    figure = Figure(figsize=(columns * _CELL, (queries + 0.4) * _CELL), dpi=_DPI)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(queries, columns, wspace=0.08, hspace=0.08)
    agreement = {}
    for r, query in enumerate(chosen):
        cells = [(0, query, QUERY)]
        for n, s in enumerate(sets):
            for j, hit in enumerate(found[s.name][r]):
                colour = MATCH if labels[hit] == labels[query] else MISMATCH
                cells.append((1 + n * (k + 1) + 1 + j, hit, colour))
        for column, image_id, colour in cells:
            ax = figure.add_subplot(grid[r, column])
            ax.imshow(images[image_id], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(3)
            if r == 0 and (column == 0 or (column - 1) % (k + 1) == 1):
                title = "query" if column == 0 else sets[(column - 1) // (k + 1)].name
                ax.set_title(title, fontsize=8, loc="left")
    for s in sets:
        pairs = zip(chosen, found[s.name], strict=True)
        agreement[s.name] = float(
            np.mean([labels[h] == labels[q] for q, row in pairs for h in row])
        )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    loc.write_bytes(str(out), buffer.getvalue())  # a local path or a URI
    return agreement
