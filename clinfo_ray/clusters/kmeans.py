"""faiss k-means, configured by one KMeansSettings (clusters.kmeans): on a faiss GPU index
when its device asks for one (clinfo_ray.devices.faiss_uses_gpu)."""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from clinfo_ray.config.sections import KMeansInit, KMeansSettings
from clinfo_ray.devices import faiss_uses_gpu

log = logging.getLogger(__name__)

# Centroid initialisation. faiss's default, "random" (k sampled points), falls into local minima
# whenever two seeds land in one true cluster (almost always for a few well-separated ones: see
# tests/test_clusters_kmeans.py). AFK-MC2 approximates k-means++ seeding at about random's cost
# (100k x 64 into 1,000 on 2 cores: +0.2 s, where exact k-means++ took +21 s).
# Keys: the names of config.sections.KMeansInit (every one; tests check), values: faiss's enum.
INIT_METHODS: dict[KMeansInit, str] = {
    "random": "ClusteringInitMethod_RANDOM",
    "afk-mc2": "ClusteringInitMethod_AFK_MC2",
    "k-means++": "ClusteringInitMethod_KMEANS_PLUS_PLUS",
}


def fit_kmeans(
    x: np.ndarray, k: int, settings: KMeansSettings, *, spherical: bool = False
) -> faiss.Kmeans:
    """Train faiss k-means on every row of x (no subsampling) and return the trained object.

    x: (n, d) float. ``settings``: iterations, restarts, seeding, seed (``seed_value``) and
    device. `iteration_stats` of the result holds faiss's per-iteration timings (the benchmark
    reads them). spherical=True normalises the centroids after each step and assigns by inner
    product: pass L2-normalised rows for cosine k-means.
    """
    x = _as_matrix(x)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of vectors, got k={k} for {n} vectors")
    gpu = faiss_uses_gpu(settings.device)
    km = faiss.Kmeans(
        d,
        k,
        niter=settings.niter,
        nredo=settings.nredo,
        seed=settings.seed_value,
        spherical=spherical,
        verbose=False,
        # faiss subsamples to 256 points per centroid by default; cluster every point instead.
        max_points_per_centroid=max(256, math.ceil(n / k)),
        # and it only warns below 39 points per centroid: small data is the caller's choice.
        min_points_per_centroid=1,
        gpu=gpu,
        **_init_parameters(settings.init),
    )
    log.debug("faiss k-means: n=%d d=%d k=%d niter=%d gpu=%s", n, d, k, settings.niter, gpu)
    km.train(x)
    return km


def kmeans(
    x: np.ndarray, k: int, settings: KMeansSettings, *, spherical: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows of x: (assignments (n,) int64 in 0..k-1, centroids (k, d) float32).

    x: (n, d) float32 (other float dtypes are converted). Assignments come from a final
    nearest-centroid pass over all rows; some of the k clusters may be empty.
    """
    x = _as_matrix(x)
    km = fit_kmeans(x, k, settings, spherical=spherical)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)  # (k, d)
    return nearest_centroid(x, centroids, spherical=spherical), centroids


def fit_and_assign(
    x: np.ndarray,
    fit_rows: np.ndarray,
    assign_rows: np.ndarray,
    k: int,
    settings: KMeansSettings,
) -> np.ndarray:
    """Spherical k-means fitted on ``x[fit_rows]`` (the train rows, say); the nearest centroid
    (inner product) of each row of ``x[assign_rows]``: (len(assign_rows),) int64 in 0..k-1."""
    _, centroids = kmeans(x[fit_rows], k, settings, spherical=True)  # (k, D)
    return nearest_centroid(x[assign_rows], centroids, spherical=True)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, *, spherical: bool) -> np.ndarray:
    """Index (n,) int64 of each row's nearest centroid: largest inner product when spherical,
    smallest L2 distance otherwise (the rule faiss k-means assigns by). Runs on the CPU: one
    search over k centroids is cheap next to training."""
    x = _as_matrix(x)
    centroids = _as_matrix(centroids)
    if centroids.shape[1] != x.shape[1]:
        raise ValueError(f"centroids have {centroids.shape[1]} dims, vectors {x.shape[1]}")
    index = faiss.IndexFlatIP(x.shape[1]) if spherical else faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    _, nearest = index.search(x, 1)  # (n, 1)
    return nearest[:, 0].astype(np.int64)


def _init_parameters(init: KMeansInit) -> dict[str, int]:
    """faiss.Kmeans' seeding keyword (``init`` is checked by KMeansSettings)."""
    method = getattr(faiss, INIT_METHODS[init], None)
    if method is None:  # faiss < 1.12 has only random seeding
        if init != "random":
            log.warning("this faiss has no %s seeding; using random", init)
        return {}
    return {"init_method": method}


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected a non-empty (n, d) matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected float vectors, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)
