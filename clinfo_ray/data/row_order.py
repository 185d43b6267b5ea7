"""The order of a dataset's rows, and how to measure whether neighbouring rows share labels.

``prepare`` writes the source rows in one seeded permutation (``row_permutation``) before it cuts
them into shards: sources list their images grouped by class (UT-Zappos50K by folder, emoji by
code point), and a reader that takes neighbouring rows together would otherwise get batches of
one class. ``mean_label_run_length`` measures that: the mean length of the runs of equal labels
in a sequence: about 1 / (1 - sum of squared class shares) for a uniform shuffle, the mean
class size for rows sorted by label.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def row_permutation(num_rows: int, seed: int) -> np.ndarray:
    """(num_rows,) int64: the order ``prepare`` writes the source rows in (manifest
    ``row_order.permutation_seed`` = ``seed``)."""
    return np.random.default_rng(seed).permutation(num_rows).astype(np.int64)


def mean_label_run_length(labels: ArrayLike) -> float:
    """Mean length of the maximal runs of equal consecutive values of ``labels`` (1-d, any
    comparable dtype; an "unlabelled" value such as -1 counts as a label like any other).

    n rows in R runs give n / R: 1.0 when no two neighbours agree, n when all do.
    """
    values = np.asarray(labels)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"labels must be a non-empty 1-d sequence, got shape {values.shape}")
    runs = 1 + int(np.count_nonzero(values[1:] != values[:-1]))
    return values.size / runs


def shuffled_mean_label_run_length(labels: ArrayLike, *, draws: int = 200, seed: int = 0) -> float:
    """The mean over ``draws`` uniform random permutations of ``labels`` of their
    ``mean_label_run_length``: what a perfectly shuffled order of the same labels gives."""
    values = np.asarray(labels)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"labels must be a non-empty 1-d sequence, got shape {values.shape}")
    shuffled = np.random.default_rng(seed).permuted(np.tile(values, (draws, 1)), axis=1)
    runs = 1 + np.count_nonzero(shuffled[:, 1:] != shuffled[:, :-1], axis=1)  # (draws,)
    return float(np.mean(values.size / runs))


def batch_label_mixing(batches: list[np.ndarray]) -> tuple[float, float]:
    """How much the batches of a stream mix labels: (mean run length of equal labels inside a
    batch, mean share of a batch's pairs that share a label). Compare with
    :func:`uniform_batches` of the same labels."""
    runs = [mean_label_run_length(b) for b in batches]
    pairs = []
    for b in batches:
        counts = np.unique(b, return_counts=True)[1]
        pairs.append((counts * (counts - 1)).sum() / (b.size * (b.size - 1)))
    return float(np.mean(runs)), float(np.mean(pairs))


def uniform_batches(
    labels: ArrayLike, size: int, *, draws: int = 2000, seed: int = 0
) -> list[np.ndarray]:
    """``draws`` batches of ``size`` labels drawn uniformly without replacement: the reference
    of :func:`batch_label_mixing`."""
    values = np.asarray(labels)
    rng = np.random.default_rng(seed)
    return [rng.choice(values, size=size, replace=False) for _ in range(draws)]
