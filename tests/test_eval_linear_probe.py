"""The linear probe: separable data is learned, random labels are not, top-k is right, and the
classifier depends on its training rows alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clinfo_ray.config import EvalConfig
from clinfo_ray.evaluation.linear_probe import topk_accuracy, train_probe

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
    probe = train_probe(train_x, train_y, EvalConfig(), device="cpu")
    res = probe.score(test_x, test_y)
    assert probe.train_top1 == 1.0
    assert res["top1"] > 0.98
    assert res["top5"] >= res["top1"]
    assert probe.num_classes == 10 and probe.train_rows == 2000 and res["rows"] == 500


def test_planted_clusters_score_one_and_random_labels_chance() -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((8, 32)) * 4
    y = rng.integers(0, 8, 1200)
    x = (centres[y] + rng.standard_normal((1200, 32))).astype(np.float32)
    assert train_probe(x[:800], y[:800], CFG, device="cpu").score(x[800:], y[800:])["top1"] == 1.0
    random_y = rng.integers(0, 8, 1200)
    probe = train_probe(x[:800], random_y[:800], CFG, device="cpu")
    top1 = probe.score(x[800:], random_y[800:])["top1"]
    assert top1 < 0.22  # chance is 1/8; 400 test rows
    assert probe.train_top1 > top1  # memorised noise does not carry over


def test_deterministic_for_a_seed_and_unlabelled_rows_dropped() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    y[:50] = -1
    a = train_probe(x[:200], y[:200], CFG, seed=5, device="cpu")
    b = train_probe(x[:200], y[:200], CFG, seed=5, device="cpu")
    assert a.train_loss == b.train_loss and torch.equal(a.weight, b.weight)
    assert a.score(x[200:], y[200:]) == b.score(x[200:], y[200:])
    assert a.train_rows == 150 and a.score(x[200:], y[200:])["rows"] == 100
    assert a.num_classes == 3 and a.score(x[200:], y[200:])["top5"] == 1.0  # top-5 of 3 is top-3


def test_classes_come_from_the_training_rows_and_an_unseen_label_is_a_miss() -> None:
    """C = 1 + the largest training label, whatever is scored later; a scored row of a class
    the training rows never showed (label >= C) counts as a miss, by hand from the weights."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((4, 8)) * 4
    x = (centres[np.arange(80) % 4] + rng.standard_normal((80, 8))).astype(np.float32)
    y = np.arange(80) % 4
    probe = train_probe(x[:40], np.minimum(y[:40], 2), CFG, device="cpu")  # classes 0, 1, 2
    assert probe.num_classes == 3 and probe.weight.shape == (3, 8)
    scored_y = y[40:].copy()  # a quarter of the rows have label 3: never predicted
    res = probe.score(x[40:], scored_y)
    logits = ((torch.from_numpy(x[40:]) - probe.mean) / probe.std) @ probe.weight.T + probe.bias
    hits = (logits.argmax(dim=1).numpy() == scored_y).sum()
    assert res["top1"] == hits / 40 and res["top1"] <= 0.75
    assert res["top5"] == np.isin(scored_y, [0, 1, 2]).mean()  # top-5 of 3 classes: all of them


def test_topk_accuracy_by_hand() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_accuracy(logits, labels, (1, 2, 5)) == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert topk_accuracy(logits, torch.tensor([3, 7, 2]), (1, 5)) == [1 / 3, 1 / 3]


def test_bad_input_is_an_error() -> None:
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="train"):
        train_probe(x, np.zeros(5, dtype=int), CFG)
    with pytest.raises(ValueError, match="no labelled"):
        train_probe(x, -np.ones(4, dtype=int), CFG)
    probe = train_probe(x, np.zeros(4, dtype=int), CFG, device="cpu")
    with pytest.raises(ValueError, match="val: no labelled"):
        probe.score(x, -np.ones(4, dtype=int), "val")
    with pytest.raises(ValueError, match="2 dims"):
        probe.score(np.ones((4, 2), dtype=np.float32), np.zeros(4, dtype=int), "val")
