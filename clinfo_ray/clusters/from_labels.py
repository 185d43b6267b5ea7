"""Clusters made from the downstream labels, split or merged at random: Z moves I(Z;T) and
H(Z|T) apart on real images (T = the label; bits; ``statistics.py``).

* **split m**: within each label, the rows in a seeded random permutation are dealt round
  robin into m parts; a row's cluster is (label, part). Z refines T, so H(T|Z) = 0 and
  I(Z;T) = H(T) exactly; each label's parts hold ⌊n_l/m⌋ or ⌈n_l/m⌉ of its n_l train rows, so
  H(Z|T) = log2 m exactly when every n_l is a multiple of m, and in general

      Σ_l p_l · log2(n_l / ⌈n_l/m⌉)  <=  H(Z|T)  <=  log2 m

  (the left side: each H(Z|T=l) is at least the min-entropy of its parts).
* **merge K**: the train split's distinct labels in a seeded random permutation are dealt round
  robin into K groups; a row's cluster is its label's group. Z is a function of T, so
  H(Z|T) = 0 and I(Z;T) = H(Z) <= min(log2 K, H(T)), equal to log2 K when every group holds
  the same number of train rows (equal label counts, a number of labels divisible by K).

The train rows and the other rows are dealt separately (split: the test rows of a label by
their own permutation; merge: labels seen only outside train are dealt after the train ones),
so the rows that never enter the statistics cannot change the train split's clusters. Rows
without a label are singletons, as in the plain `labels` method. Pure numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .statistics import UNLABELLED
from .table import with_singletons


def label_clusters(
    codes: np.ndarray, train: np.ndarray, *, split: int = 1, merge: int = 0, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """(n,) int64 clusters 0..K-1 of the rows, and what the draw made.

    ``codes``: (n,) int64 label codes, UNLABELLED (-1) where a row has none (``label_codes``);
    ``train``: (n,) bool, the train split; ``split`` m >= 1 (1: off), ``merge`` K (0: off, else
    >= 2), not both; ``seed`` draws the permutations. The details record ``split``, ``merge``,
    ``draw_seed`` (None when nothing is drawn) and, for merge, ``groups``: the groups the train
    split's labels fill (min(K, its number of labels)).
    """
    codes = np.asarray(codes, dtype=np.int64)
    train = np.asarray(train, dtype=bool)
    if codes.shape != train.shape or codes.ndim != 1:
        raise ValueError(f"codes {codes.shape} and train {train.shape} must be one (n,) shape")
    if split < 1 or merge == 1 or merge < 0 or (split > 1 and merge > 0):
        raise ValueError(f"split >= 1 and merge 0 or >= 2, not both; got {split} and {merge}")
    unlabelled = codes == UNLABELLED
    details: dict[str, Any] = {"split": split, "merge": merge, "draw_seed": None}
    if split == 1 and merge == 0:
        return with_singletons(codes, unlabelled), details
    details["draw_seed"] = seed
    rng = np.random.default_rng(seed)
    if split > 1:
        part = split_parts(codes, train, split, rng)
        return with_singletons(codes * split + part, unlabelled), details
    group, made = merged_groups(codes, train, merge, rng)
    return with_singletons(group, unlabelled), {**details, "groups": made}


def split_parts(
    codes: np.ndarray, train: np.ndarray, parts: int, rng: np.random.Generator
) -> np.ndarray:
    """(n,) int64 part 0..parts-1 of every labelled row (0 for the unlabelled): each label's
    train rows dealt round robin in a random order, then its other rows the same way."""
    part = np.zeros(codes.size, dtype=np.int64)
    labelled = codes != UNLABELLED
    for rows in (np.flatnonzero(labelled & train), np.flatnonzero(labelled & ~train)):
        part[rows] = _deal(codes[rows], parts, rng)
    return part


def merged_groups(
    codes: np.ndarray, train: np.ndarray, groups: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """(n,) int64 group 0..groups-1 of each labelled row's label (0 for the unlabelled), and
    how many groups the train labels fill. The train split's labels are dealt round robin in a
    random order; labels seen only in other rows continue the deal in an order of their own."""
    labelled = codes != UNLABELLED
    in_train = np.unique(codes[labelled & train])
    elsewhere = np.setdiff1d(np.unique(codes[labelled]), in_train)
    order = np.concatenate([rng.permutation(in_train), rng.permutation(elsewhere)])
    group_of = np.zeros(int(codes.max(initial=-1)) + 1, dtype=np.int64)  # by label code
    group_of[order] = np.arange(order.size, dtype=np.int64) % groups
    group = np.zeros(codes.size, dtype=np.int64)
    group[labelled] = group_of[codes[labelled]]
    return group, min(groups, int(in_train.size))


def _deal(keys: np.ndarray, parts: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) int64: within each value of ``keys``, the rows in one random order dealt round
    robin into ``parts`` parts (a key's parts then differ in size by at most one)."""
    order = rng.permutation(keys.size)
    order = order[np.argsort(keys[order], kind="stable")]  # grouped by key, random within
    grouped = keys[order]
    rank = np.arange(keys.size) - np.searchsorted(grouped, grouped, side="left")
    part = np.empty(keys.size, dtype=np.int64)
    part[order] = rank % parts
    return part
