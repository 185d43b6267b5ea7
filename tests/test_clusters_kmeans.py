"""faiss k-means recovers planted clusters; nearest-centroid assignment; faiss device choice."""

from __future__ import annotations

import typing

import faiss
import numpy as np
import pytest

from clinfo_ray.clusters.kmeans import INIT_METHODS, kmeans, nearest_centroid
from clinfo_ray.config import KMeansSettings
from clinfo_ray.config.sections import KMeansInit
from clinfo_ray.devices import faiss_gpu_count, faiss_uses_gpu

CPU = KMeansSettings(device="cpu")


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
    settings = KMeansSettings(niter=20, nredo=3, seed=1)
    assignments, centroids = kmeans(x, 8, settings, spherical=spherical)
    assert assignments.dtype == np.int64 and assignments.shape == (x.shape[0],)
    assert centroids.dtype == np.float32 and centroids.shape == (8, 16)
    assert same_partition(assignments, truth)
    if spherical:
        np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-4)


def test_every_configurable_init_has_a_faiss_method() -> None:
    assert set(INIT_METHODS) == set(typing.get_args(KMeansInit))


@pytest.mark.parametrize("init", typing.get_args(KMeansInit))
def test_init_reaches_faiss(init: KMeansInit) -> None:
    """Centroids equal plain faiss.Kmeans' with the same seeding method and seed."""
    x, _ = planted(n_per=100, k=6, d=8, seed=2)
    _, centroids = kmeans(x, 6, KMeansSettings(niter=10, seed=5, init=init, device="cpu"))
    method = getattr(faiss, INIT_METHODS[init])
    reference = faiss.Kmeans(8, 6, niter=10, seed=5, init_method=method, min_points_per_centroid=1)
    reference.train(x)
    np.testing.assert_allclose(centroids, reference.centroids, rtol=1e-5, atol=1e-5)


def test_kmeans_is_deterministic_for_a_seed() -> None:
    x, _ = planted(n_per=50, k=5, d=4, seed=0)
    settings = KMeansSettings(niter=5, seed=7, device="cpu")
    first, c1 = kmeans(x, 5, settings)
    second, c2 = kmeans(x, 5, settings)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(c1, c2)


def test_nearest_centroid_uses_inner_product_when_spherical() -> None:
    centroids = np.array([[1.0, 0.0], [10.0, 10.0]], dtype=np.float32)
    x = np.array([[0.9, 0.1], [3.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(nearest_centroid(x, centroids, spherical=False), [0, 0])
    np.testing.assert_array_equal(nearest_centroid(x, centroids, spherical=True), [1, 1])


def test_an_unset_seed_draws_from_zero() -> None:
    x, _ = planted(n_per=50, k=5, d=4, seed=0)
    unset, _ = kmeans(x, 5, KMeansSettings(niter=5, device="cpu"))
    zero, _ = kmeans(x, 5, KMeansSettings(niter=5, seed=0, device="cpu"))
    np.testing.assert_array_equal(unset, zero)


def test_kmeans_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k=5 for 3 vectors"):
        kmeans(np.zeros((3, 2), dtype=np.float32), 5, CPU)
    with pytest.raises(ValueError, match="float"):
        kmeans(np.zeros((3, 2), dtype=np.int64), 2, CPU)
    with pytest.raises(ValueError, match="shape"):
        kmeans(np.zeros(4, dtype=np.float32), 2, CPU)


def test_faiss_device_follows_what_faiss_sees() -> None:
    assert faiss_uses_gpu("cpu") is False
    assert faiss_uses_gpu("auto") is (faiss_gpu_count() > 0)
    if faiss_gpu_count() == 0:
        with pytest.raises(RuntimeError, match="faiss sees no GPU"):
            faiss_uses_gpu("gpu")
        with pytest.raises(RuntimeError, match="faiss sees no GPU"):
            kmeans(np.ones((4, 2), dtype=np.float32), 2, KMeansSettings(device="gpu"))
    else:
        assert faiss_uses_gpu("gpu") is True
    for bad in ("cuda", True, None):
        with pytest.raises(ValueError, match="device must be one of 'auto', 'cpu', 'gpu'"):
            faiss_uses_gpu(bad)  # type: ignore[arg-type]


def test_ray_device_choice_needs_no_cluster_unless_auto() -> None:
    from clinfo_ray.devices import ray_uses_gpu

    assert ray_uses_gpu("cpu") is False
    assert ray_uses_gpu("gpu") is True  # an autoscaling cluster may add GPU nodes on demand
    with pytest.raises(ValueError, match="device must be one of"):
        ray_uses_gpu("yes")  # type: ignore[arg-type]
