"""Weighted kNN against a slow, obviously-right numpy reference."""

from __future__ import annotations

import subprocess
import sys

import faiss
import numpy as np
import pytest

from clinfo_ray.devices import faiss_gpu_count
from clinfo_ray.evaluation import knn
from clinfo_ray.evaluation.knn import knn_predict, knn_top1


def reference_predict(
    train: np.ndarray, train_y: np.ndarray, test: np.ndarray, k: int, t: float
) -> np.ndarray:
    """Float64 double loop: cosine, top k, votes exp(s / T), ties to the nearest tied class."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    pred = []
    for q in test.astype(np.float64):
        sims = train.astype(np.float64) @ q
        order = np.argsort(-sims, kind="stable")[: min(k, len(train))]
        votes: dict[int, float] = {}
        for j in order:
            votes[int(train_y[j])] = votes.get(int(train_y[j]), 0.0) + np.exp(sims[j] / t)
        best = max(votes.values())
        tied = {c for c, v in votes.items() if np.isclose(v, best, rtol=1e-9, atol=0)}
        pred.append(next(int(train_y[j]) for j in order if int(train_y[j]) in tied))
    return np.array(pred)


def planted(
    rng: np.random.Generator, n: int, centres: np.ndarray, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, len(centres), n)
    x = centres[y] + noise * rng.standard_normal((n, centres.shape[1]))
    return x.astype(np.float32), y


@pytest.mark.parametrize("k,t", [(1, 0.07), (5, 0.07), (20, 0.5), (20, 0.01)])
def test_matches_reference_on_overlapping_clusters(k: int, t: float) -> None:
    rng = np.random.default_rng(k)
    centres = rng.standard_normal((6, 16))
    train_x, train_y = planted(rng, 300, centres, noise=1.2)
    test_x, test_y = planted(rng, 200, centres, noise=1.2)
    pred = knn_predict(train_x, train_y, test_x, k=k, temperature=t, device="cpu")
    want = reference_predict(train_x, train_y, test_x, k, t)
    assert np.array_equal(pred, want)
    acc = knn_top1(train_x, train_y, test_x, test_y, k=k, temperature=t, device="cpu")
    assert acc == pytest.approx(np.mean(want == test_y))
    assert 0.3 < acc < 0.99  # the noise makes mistakes: a metric that could be wrong


def test_separated_clusters_score_one_and_random_labels_chance() -> None:
    rng = np.random.default_rng(0)
    centres = 10 * np.eye(8, 32)
    train_x, train_y = planted(rng, 400, centres, noise=0.3)
    test_x, test_y = planted(rng, 400, centres, noise=0.3)
    assert knn_top1(train_x, train_y, test_x, test_y, device="cpu") == 1.0
    shuffled = rng.permutation(train_y)
    assert knn_top1(train_x, shuffled, test_x, test_y, device="cpu") < 0.25  # chance: 1/8


def test_k_larger_than_train_set_and_unlabelled_rows() -> None:
    train_x = np.array([[1, 0], [0.9, 0.1], [0, 1], [5, 5]], dtype=np.float32)
    train_y = np.array([0, 0, 1, -1])  # the unlabelled row never votes
    test_x = np.array([[1, 0.05], [0.05, 1], [1, 1]], dtype=np.float32)
    pred = knn_predict(train_x, train_y, test_x, k=50, temperature=0.1, device="cpu")
    assert pred.tolist() == [0, 1, 0]  # [1, 1]: two class-0 votes beat one equally close vote
    want = reference_predict(train_x[:3], train_y[:3], test_x, 50, 0.1)
    assert pred.tolist() == want.tolist()
    acc = knn_top1(train_x, train_y, test_x, np.array([0, 1, -1]), k=50, device="cpu")
    assert acc == 1.0  # the unlabelled test row is not scored


def test_ties_go_to_the_most_similar_neighbour() -> None:
    # Two neighbours at equal similarity per class would tie; the nearer class wins instead.
    train_x = np.array([[1, 0.2], [1, -0.2], [1, 0.1]], dtype=np.float32)
    train_y = np.array([3, 3, 1])
    test_x = np.array([[1, 0.1]], dtype=np.float32)
    assert knn_predict(train_x, train_y, test_x, k=1, device="cpu").tolist() == [1]
    dup_x = np.array([[1, 0], [1, 0]], dtype=np.float32)  # identical rows, different labels
    got = knn_predict(dup_x, np.array([4, 2]), np.array([[1, 0]], dtype=np.float32), k=2)
    assert got.tolist()[0] in (2, 4)


def test_bad_input_is_an_error() -> None:
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(x, np.zeros(3, dtype=int), x)
    with pytest.raises(ValueError, match="dims"):
        knn_predict(x, np.zeros(4, dtype=int), np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="labelled train"):
        knn_predict(x, -np.ones(4, dtype=int), x)


def test_device_choice_reaches_faiss() -> None:
    x = np.eye(4, dtype=np.float32)
    y = np.arange(4)
    assert knn_predict(x, y, x, k=1, device="cpu").tolist() == y.tolist()
    if faiss_gpu_count() == 0:
        with pytest.raises(RuntimeError, match="faiss sees no GPU"):
            knn_predict(x, y, x, k=1, device="gpu")
    with pytest.raises(ValueError, match="device must be one of"):
        knn_predict(x, y, x, k=1, device="cuda")  # type: ignore[arg-type]


def test_gpu_resources_made_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every GPU search of a process shares one faiss resource object (faked here: no GPU)."""
    made: list[object] = []
    moved: list[object] = []

    def fake_resources() -> object:
        made.append(object())
        return made[-1]

    def fake_to_gpu(resources: object, device: int, index: faiss.Index) -> faiss.Index:
        moved.append(resources)
        return index

    monkeypatch.setattr(faiss, "StandardGpuResources", fake_resources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_to_gpu, raising=False)
    monkeypatch.setattr(knn, "faiss_uses_gpu", lambda device: True)
    knn.gpu_resources.cache_clear()
    try:
        x, y = np.eye(4, dtype=np.float32), np.arange(4)
        for _ in range(3):
            assert knn_top1(x, y, x, y, k=1) == 1.0
    finally:
        knn.gpu_resources.cache_clear()  # never leave the fake to a later test
    assert len(made) == 1 and moved == [made[0]] * 3


def test_knn_does_not_import_the_clusters_package() -> None:
    """evaluation sits beside clusters, not above it: the faiss device choice is in devices."""
    code = "import sys, clinfo_ray.evaluation.knn; print('clinfo_ray.clusters' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
