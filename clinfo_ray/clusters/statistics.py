"""Information statistics of a clustering Z against downstream labels T (plug-in, in bits).

The paper explains Cl-InfoNCE's results with I(Z;T) (how much the clusters say about the labels;
higher is better) and H(Z|T) (how much they say about anything else; lower is better). All values
are plug-in estimates from the empirical joint distribution of the rows passed in; callers pass
the train split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

UNLABELLED = -1  # a label value that means "no label": left out of the label statistics


def entropy_bits(values: np.ndarray) -> float:
    """H(X) in bits of the empirical distribution of the values (any integer or string array)."""
    values = np.asarray(values)
    if values.size == 0:
        return 0.0
    _, counts = np.unique(values, return_counts=True)
    return _entropy_of_counts(counts)


def joint_entropy_bits(a: np.ndarray, b: np.ndarray) -> float:
    """H(A, B) in bits of the empirical joint distribution of paired values."""
    codes_a, codes_b = _paired_codes(a, b)
    return entropy_bits(codes_a * (int(codes_b.max(initial=0)) + 1) + codes_b)


def mutual_information_bits(z: np.ndarray, t: np.ndarray) -> float:
    """I(Z;T) = H(Z) + H(T) - H(Z,T) in bits, clipped at 0 against float round-off."""
    z, t = np.asarray(z), np.asarray(t)
    return max(0.0, entropy_bits(z) + entropy_bits(t) - joint_entropy_bits(z, t))


def conditional_entropy_bits(z: np.ndarray, t: np.ndarray) -> float:
    """H(Z|T) = H(Z,T) - H(T) in bits, clipped at 0 against float round-off."""
    return max(0.0, joint_entropy_bits(z, t) - entropy_bits(np.asarray(t)))


def cluster_statistics(clusters: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """The stats.json record of a clustering.

    clusters: (n,) int64 cluster ids of the rows (the train split).
    labels: (n,) integer labels of the same rows, UNLABELLED (-1) where unknown, or None.
    H(Z), the number of clusters, the number of singleton clusters (one row each: rows with no
    tag, label or ancestor end up there) and the cluster sizes use every row; H(T), I(Z;T) and
    H(Z|T) use the labelled rows only, and are None when no row has a label.
    """
    clusters = np.asarray(clusters)
    if clusters.ndim != 1:
        raise ValueError(f"clusters must be one-dimensional, got shape {clusters.shape}")
    _, sizes = np.unique(clusters, return_counts=True)
    record: dict[str, Any] = {
        "num_rows": int(clusters.size),
        "num_clusters": int(sizes.size),
        "singleton_clusters": int((sizes == 1).sum()),
        "cluster_entropy_bits": _entropy_of_counts(sizes),
        "label_entropy_bits": None,
        "mutual_information_bits": None,
        "conditional_entropy_bits": None,
        "cluster_size": {
            "min": int(sizes.min()) if sizes.size else 0,
            "median": float(np.median(sizes)) if sizes.size else 0.0,
            "max": int(sizes.max()) if sizes.size else 0,
        },
    }
    if labels is None:
        return record
    labels = np.asarray(labels)
    if labels.shape != clusters.shape:
        raise ValueError(f"labels have shape {labels.shape}, clusters {clusters.shape}")
    labelled = labels != UNLABELLED
    if not labelled.any():
        return record
    z, t = clusters[labelled], labels[labelled]
    record["num_labelled_rows"] = int(labelled.sum())
    record["label_entropy_bits"] = entropy_bits(t)
    record["mutual_information_bits"] = mutual_information_bits(z, t)
    record["conditional_entropy_bits"] = conditional_entropy_bits(z, t)
    return record


def _entropy_of_counts(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def _paired_codes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-d arrays of one length, got {a.shape} and {b.shape}")
    codes_a = np.unique(a, return_inverse=True)[1].astype(np.int64)
    codes_b = np.unique(b, return_inverse=True)[1].astype(np.int64)
    return codes_a, codes_b
