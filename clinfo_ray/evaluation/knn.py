"""Weighted k-nearest-neighbour classification of frozen features (the online metric).

As in Wu et al. 2018 (instance discrimination) and DINO's ``eval_knn.py``: features are
L2-normalised, each test row finds its k most cosine-similar train rows (faiss ``IndexFlatIP``,
exact), and neighbour j votes for its label with weight ``exp(s_j / T)``. The class with the
largest summed weight wins. Ties (equal summed weights, e.g. duplicate features) go to the tied
class of the most similar neighbour, not to the smallest class id.

Rows with a negative label (the dataset format's "no label", -1) take no part: unlabelled train
rows never vote and unlabelled test rows are not scored. Pure numpy + faiss; no Ray.
"""

from __future__ import annotations

import functools
import logging

import faiss
import numpy as np

from clinfo_ray.config import Device
from clinfo_ray.devices import faiss_uses_gpu

log = logging.getLogger(__name__)

# faiss GPU flat search supports k up to this (faiss/gpu/utils/DeviceDefs.cuh).
_GPU_MAX_K = 2048
# Test rows per search call: bounds the (chunk, k) neighbour and (chunk, classes) vote arrays.
_QUERY_CHUNK = 8192


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32, C-contiguous (faiss's input); zero rows stay zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected an (n, d) feature matrix, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) to match the features, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class ids, got dtype {y.dtype}")
    return y.astype(np.int64)


@functools.cache
def gpu_resources() -> faiss.StandardGpuResources:
    """This process's one faiss GPU resource object (CUDA streams, cuBLAS handle, scratch
    memory), made on first use and kept: making one per search (each online kNN of a training
    worker) costs its set-up every time. faiss's Python wrapper also keeps a reference to it
    inside every GPU index made from it."""
    return faiss.StandardGpuResources()


def flat_index(train: np.ndarray, k: int, device: Device) -> faiss.Index:
    """An exact inner-product index of ``train`` (unit rows: cosine), on a GPU when ``device``
    says so and faiss has one (searches of up to ``k`` neighbours)."""
    index: faiss.Index = faiss.IndexFlatIP(train.shape[1])
    if faiss_uses_gpu(device) and k <= _GPU_MAX_K:
        index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index)
    index.add(train)
    return index


def _vote(
    sims: np.ndarray, neighbour_labels: np.ndarray, num_classes: int, temperature: float
) -> np.ndarray:
    """Predicted class per row from (rows, k) similarities (descending) and neighbour labels."""
    rows = sims.shape[0]
    # Subtracting the row's best similarity leaves the argmax unchanged and keeps exp in range
    # for small T (exp(1 / 0.01) overflows float32).
    weights = np.exp((sims.astype(np.float64) - sims[:, :1]) / temperature)  # (rows, k)
    flat = (np.arange(rows)[:, None] * num_classes + neighbour_labels).ravel()
    scores = np.bincount(flat, weights=weights.ravel(), minlength=rows * num_classes)
    scores = scores.reshape(rows, num_classes)  # (rows, classes)
    best = scores.max(axis=1, keepdims=True)
    tied = scores >= best * (1.0 - 1e-9)  # (rows, classes): float sums of equal votes may differ
    # The first (most similar) neighbour whose label is among the tied classes decides.
    first = np.argmax(np.take_along_axis(tied, neighbour_labels, axis=1), axis=1)  # (rows,)
    return neighbour_labels[np.arange(rows), first]


def knn_predict(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    device: Device = "auto",
) -> np.ndarray:
    """Weighted-kNN class (n_test,) int64 of every test row.

    train_features: (n_train, D) float; train_labels: (n_train,) int, -1 = unlabelled (ignored);
    test_features: (n_test, D) float. ``k`` larger than the labelled train rows uses them all.
    ``device``: where faiss searches ("auto": a faiss GPU index when faiss sees a GPU).
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    train = l2_normalize(train_features)
    test = l2_normalize(test_features)
    labels = _labels(train_labels, train.shape[0], "train_labels")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train features have {train.shape[1]} dims, test {test.shape[1]}")
    keep = labels >= 0
    train, labels = np.ascontiguousarray(train[keep]), labels[keep]
    if len(labels) == 0:
        raise ValueError("kNN needs at least one labelled train row")
    k = min(k, len(labels))
    index = flat_index(train, k, device)
    num_classes = int(labels.max()) + 1
    pred = np.empty(test.shape[0], dtype=np.int64)
    for start in range(0, test.shape[0], _QUERY_CHUNK):
        sims, nearest = index.search(test[start : start + _QUERY_CHUNK], k)  # (chunk, k) each
        pred[start : start + len(sims)] = _vote(sims, labels[nearest], num_classes, temperature)
    return pred


def knn_top1(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    *,
    device: Device = "auto",
) -> float:
    """Fraction of labelled test rows whose weighted-kNN class is their label (see the module
    docstring). Arguments as :func:`knn_predict`; test_labels: (n_test,) int, -1 = not scored."""
    test_y = _labels(test_labels, np.asarray(test_features).shape[0], "test_labels")
    scored = test_y >= 0
    if not scored.any():
        raise ValueError("kNN top-1 needs at least one labelled test row")
    pred = knn_predict(
        train_features,
        train_labels,
        np.asarray(test_features)[scored],
        k=k,
        temperature=temperature,
        device=device,
    )
    return float(np.mean(pred == test_y[scored]))
