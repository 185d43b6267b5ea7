"""The linear probe: separable data is learned, random labels are not, top-k is right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clinfo_ray.config import EvalConfig
from clinfo_ray.evaluation.linear_probe import linear_probe, topk_accuracy

CFG = EvalConfig(linear_epochs=30, linear_lr=0.1, linear_batch_size=256)


def separable(
    rng: np.random.Generator, n: int, centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes around far-apart centres, shifted and scaled (standardisation matters)."""
    y = rng.integers(0, len(centres), n)
    x = centres[y] + rng.standard_normal((n, centres.shape[1]))
    return (x * 3.0 + 7.0).astype(np.float32), y


def test_separable_data_is_learned() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 256)) * 0.5  # centres ~11 apart, noise 1 per dim
    train_x, train_y = separable(rng, 2000, centres)
    test_x, test_y = separable(rng, 500, centres)
    res = linear_probe(train_x, train_y, test_x, test_y, EvalConfig(), device="cpu")
    assert res["train_top1"] == 1.0
    assert res["top1"] > 0.98
    assert res["top5"] >= res["top1"]
    assert res["num_classes"] == 10 and res["train_rows"] == 2000 and res["test_rows"] == 500


def test_planted_clusters_score_one_and_random_labels_chance() -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((8, 32)) * 4
    y = rng.integers(0, 8, 1200)
    x = (centres[y] + rng.standard_normal((1200, 32))).astype(np.float32)
    res = linear_probe(x[:800], y[:800], x[800:], y[800:], CFG, device="cpu")
    assert res["top1"] == 1.0
    random_y = rng.integers(0, 8, 1200)
    res = linear_probe(x[:800], random_y[:800], x[800:], random_y[800:], CFG, device="cpu")
    assert res["top1"] < 0.22  # chance is 1/8; 400 test rows
    assert res["train_top1"] > res["top1"]  # memorised noise does not carry over


def test_deterministic_for_a_seed_and_unlabelled_rows_dropped() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    y[:50] = -1
    a = linear_probe(x[:200], y[:200], x[200:], y[200:], CFG, seed=5, device="cpu")
    b = linear_probe(x[:200], y[:200], x[200:], y[200:], CFG, seed=5, device="cpu")
    assert a["train_loss"] == b["train_loss"] and a["top1"] == b["top1"]
    assert a["train_rows"] == 150 and a["test_rows"] == 100
    assert a["num_classes"] == 3 and a["top5"] == 1.0  # top-5 of 3 classes is top-3


def test_topk_accuracy_by_hand() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_accuracy(logits, labels, (1, 2, 5)) == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_bad_input_is_an_error() -> None:
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="train"):
        linear_probe(x, np.zeros(5, dtype=int), x, np.zeros(4, dtype=int), CFG)
    with pytest.raises(ValueError, match="no labelled"):
        linear_probe(x, np.zeros(4, dtype=int), x, -np.ones(4, dtype=int), CFG)
