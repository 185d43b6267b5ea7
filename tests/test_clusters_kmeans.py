"""faiss k-means recovers planted clusters; nearest-centroid assignment; GPU selection."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from clinfo_ray.clusters.kmeans import (
    INIT_METHODS,
    faiss_gpu_count,
    kmeans,
    nearest_centroid,
    resolve_gpu,
)


def planted(n_per: int, k: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k well-separated Gaussian blobs: (k * n_per, d) float32 points, their blob ids."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 10.0
    truth = np.repeat(np.arange(k), n_per)
    x = centres[truth] + rng.standard_normal((truth.size, d)) * 0.5
    order = rng.permutation(truth.size)
    return x[order].astype(np.float32), truth[order]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b group the rows identically, whatever the ids."""
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("spherical", [False, True])
def test_kmeans_recovers_planted_clusters(spherical: bool) -> None:
    x, truth = planted(n_per=200, k=8, d=16, seed=3)
    if spherical:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    assignments, centroids = kmeans(x, 8, niter=20, nredo=3, seed=1, spherical=spherical)
    assert assignments.dtype == np.int64 and assignments.shape == (x.shape[0],)
    assert centroids.dtype == np.float32 and centroids.shape == (8, 16)
    assert same_partition(assignments, truth)
    if spherical:
        np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("init", ["random", "afk-mc2", "k-means++"])
def test_init_reaches_faiss(init: str) -> None:
    """Centroids equal plain faiss.Kmeans' with the same seeding method and seed."""
    x, _ = planted(n_per=100, k=6, d=8, seed=2)
    _, centroids = kmeans(x, 6, niter=10, seed=5, init=init, use_gpu=False)
    method = getattr(faiss, INIT_METHODS[init])
    reference = faiss.Kmeans(8, 6, niter=10, seed=5, init_method=method, min_points_per_centroid=1)
    reference.train(x)
    np.testing.assert_allclose(centroids, reference.centroids, rtol=1e-5, atol=1e-5)


def test_kmeans_is_deterministic_for_a_seed() -> None:
    x, _ = planted(n_per=50, k=5, d=4, seed=0)
    first, c1 = kmeans(x, 5, niter=5, seed=7, use_gpu=False)
    second, c2 = kmeans(x, 5, niter=5, seed=7, use_gpu=False)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(c1, c2)


def test_nearest_centroid_uses_inner_product_when_spherical() -> None:
    centroids = np.array([[1.0, 0.0], [10.0, 10.0]], dtype=np.float32)
    x = np.array([[0.9, 0.1], [3.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(nearest_centroid(x, centroids, spherical=False), [0, 0])
    np.testing.assert_array_equal(nearest_centroid(x, centroids, spherical=True), [1, 1])


def test_kmeans_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k=5 for 3 vectors"):
        kmeans(np.zeros((3, 2), dtype=np.float32), 5)
    with pytest.raises(ValueError, match="float"):
        kmeans(np.zeros((3, 2), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="shape"):
        kmeans(np.zeros(4, dtype=np.float32), 2)


def test_gpu_selection_follows_what_faiss_sees() -> None:
    assert resolve_gpu(False) is False
    assert resolve_gpu("auto") is (faiss_gpu_count() > 0)
    if faiss_gpu_count() == 0:
        with pytest.raises(RuntimeError, match="no GPU"):
            resolve_gpu(True)
