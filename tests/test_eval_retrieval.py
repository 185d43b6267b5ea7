"""recall@k and mAP@R against a brute-force computation written here (no faiss, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from clinfo_ray.evaluation.retrieval import retrieval_metrics


def brute_force(gx, gy, qx, qy, ks):  # type: ignore[no-untyped-def]
    """Every query against every gallery row, sorted by cosine similarity, by hand."""
    keep = gy >= 0
    gx, gy = gx[keep], gy[keep]
    g = gx / np.linalg.norm(gx, axis=1, keepdims=True)
    recalls, aps = {k: [] for k in ks}, []
    for x, y in zip(qx, qy, strict=True):
        r = int((gy == y).sum())
        if y < 0 or r == 0:
            continue
        sims = g @ (x / np.linalg.norm(x))
        order = sorted(range(len(gy)), key=lambda j: -sims[j])
        rel = [int(gy[j] == y) for j in order]
        for k in ks:
            recalls[k].append(float(any(rel[:k])))
        precision_sum = sum(sum(rel[: i + 1]) / (i + 1) for i in range(r) if rel[i])
        aps.append(precision_sum / r)
    return {f"recall_at_{k}": float(np.mean(v)) for k, v in recalls.items()} | {
        "map_at_r": float(np.mean(aps)),
        "queries": float(len(aps)),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 8))
    gy = rng.integers(0, 6, size=120)
    qy = rng.integers(0, 7, size=40)  # label 6: no gallery row has it, left out
    gy[:5] = -1  # unlabelled gallery rows take no part
    qy[:3] = -1
    gx = centres[np.clip(gy, 0, 5)] + rng.normal(scale=1.2, size=(120, 8))
    qx = centres[np.clip(qy, 0, 5)] + rng.normal(scale=1.2, size=(40, 8))
    got = retrieval_metrics(gx, gy, qx, qy, ks=(1, 3, 10))
    want = brute_force(gx, gy, qx, qy, (1, 3, 10))
    assert got == pytest.approx(want, abs=1e-6)
    assert 0 < got["map_at_r"] < got["recall_at_10"] <= 1


def test_perfect_and_hopeless_rankings() -> None:
    gx = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    gy = np.array([0, 0, 1, 1])
    perfect = retrieval_metrics(gx, gy, gx, gy, ks=(1,))
    assert perfect["recall_at_1"] == 1.0 and perfect["map_at_r"] == 1.0
    # queries whose relevant rows are ranked last: R = 2, relevant at ranks 3 and 4 -> AP@R = 0
    hopeless = retrieval_metrics(gx, gy, gx[[2, 0]], np.array([0, 1]), ks=(1, 2))
    assert hopeless["recall_at_2"] == 0.0 and hopeless["map_at_r"] == 0.0
    nothing = retrieval_metrics(gx, gy, gx[:1], np.array([5]))
    assert nothing["queries"] == 0.0
