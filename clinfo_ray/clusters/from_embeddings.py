"""Clusters from a checkpoint's embeddings: spherical faiss k-means (the `kmeans` method).

The embeddings come from an inference pass that lives outside this package (Ray Data, in
clinfo_ray.evaluation.features); here they are plain arrays keyed by image id. The centroids are
fitted on the train rows only, as the statistics are taken over the train split and the test
split must not shape the clusters; every row, test included, then goes to its nearest centroid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from clinfo_ray.config import KMeansSettings

from .kmeans import fit_and_assign
from .table import contiguous

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embeddings:
    """One vector per image id, in any order.

    ids: (n,) str, each at most once.
    vectors: (n, D) float32, L2-normalised (spherical k-means assigns by inner product).
    source: where they came from (a checkpoint path), recorded in the stats.
    """

    ids: np.ndarray
    vectors: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.ids):
            raise ValueError(
                f"embeddings: {len(self.ids)} ids but vectors of shape {self.vectors.shape}"
            )


def align_embeddings(embeddings: Embeddings, ids: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, D) float32 in the order of `ids`, has (n,) bool).

    Rows of `ids` without an embedding (an image the inference pass could not decode) get zero
    vectors and has=False. An embedded id that is not in `ids`, or one embedded twice, is an
    error naming how many and an example.
    """
    wanted = np.asarray(ids.to_pylist(), dtype=object).astype(str)
    got = np.asarray(embeddings.ids, dtype=object).astype(str)
    order = np.argsort(got, kind="stable")
    got_sorted = got[order]
    repeated = got_sorted[1:][got_sorted[1:] == got_sorted[:-1]]
    if len(repeated):
        raise ValueError(f"{len(repeated)} id(s) embedded twice, e.g. {str(repeated[0])!r}")
    extra = np.setdiff1d(got, wanted)
    if len(extra):
        raise ValueError(f"{len(extra)} embedded id(s) not in the dataset, e.g. {str(extra[0])!r}")
    at = np.searchsorted(got_sorted, wanted).clip(max=max(len(got) - 1, 0))
    has = (got_sorted[at] == wanted) if len(got) else np.zeros(len(wanted), dtype=bool)
    vectors = np.zeros((len(wanted), embeddings.vectors.shape[1]), dtype=np.float32)
    vectors[has] = embeddings.vectors[order[at[has]]]
    return vectors, has


def embedding_kmeans_clusters(
    vectors: np.ndarray,
    has: np.ndarray,
    train: np.ndarray,
    k: int,
    settings: KMeansSettings,
) -> tuple[np.ndarray, dict]:
    """(n,) int64 clusters 0..K-1 with K <= k (+ singletons), and what was done.

    vectors: (n, D) float32, L2-normalised; has: (n,) bool, rows with an embedding; train: (n,)
    bool; settings: how k-means runs (clusters.kmeans). Spherical k-means on the embedded train
    rows, nearest centroid (inner product) for every embedded row, empty clusters dropped. A row
    without an embedding is its own singleton cluster, numbered after the k-means ones: nothing
    says which other rows it belongs with.
    """
    fit = has & train
    if not 1 <= k <= int(fit.sum()):
        raise ValueError(
            f"--k {k}: k-means needs 1 <= k <= the number of embedded train images "
            f"({int(fit.sum())})"
        )
    codes = np.empty(len(vectors), dtype=np.int64)
    assigned = fit_and_assign(vectors, fit, has, k, settings)
    codes[has] = contiguous(assigned)
    missing = int((~has).sum())
    if missing:
        log.warning("%d image(s) without an embedding: each is its own cluster", missing)
    codes[~has] = codes[has].max(initial=-1) + 1 + np.arange(missing)
    details = {
        "k_requested": k,
        "train_rows_clustered": int(fit.sum()),
        "embedding_dim": int(vectors.shape[1]),
        "images_without_embedding": missing,
    }
    return codes, details
