"""The linear probe's setting chosen by k-fold cross-validation on the fitting rows alone.

A study trial holds validation rows out of the train split; the other train rows (the fitting
rows) are all the probe may learn from. Choosing the probe's setting (weight decay, epochs) by
its score on the validation rows, and then reporting that score, reports the best of several
draws on the same images: an optimistic number. Here the choice reads the fitting rows only:

- Folds: each fitting row's group key (:func:`clinfo_ray.data.splits.group_keys`: the id, or
  the part after its first ``/`` so that the renderings of one emoji go together) is hashed
  as the validation split hashes it, with a salt of its own: SHA-1 of
  ``"clinfo-ray-probe-fold:" + key``, its first 8 bytes a big-endian fraction u in [0, 1), fold
  ``floor(u * k)``. Rows sharing a group key share a fold; the folds depend on the ids alone
  (not the row order, the seed or the validation rows) and hold about n / k rows each. The
  salt differs from the validation split's, so the two draws are independent.
- Scores: for each setting, in the order given, for each fold f: train on the labelled rows of
  the other folds, count the top-1 hits on f's labelled rows. The setting's CV top-1 is the hits
  of all folds over their rows (count-weighted; a fold with no labelled rows adds nothing).
- Choice: the highest CV top-1; ties go to the first setting tried.

The caller then trains one probe with the chosen setting on all the fitting rows and scores
the validation rows once (and the test rows once) with it. Pure numpy + torch; no Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from clinfo_ray.config import EvalConfig
from clinfo_ray.data.splits import group_keys
from clinfo_ray.evaluation.linear_probe import train_probe

log = logging.getLogger(__name__)

FOLD_SALT = "clinfo-ray-probe-fold"


def probe_folds(ids: Sequence[str], k: int, group: str = "id") -> np.ndarray:
    """(n,) int64 in 0..k-1: the fold of each row, from the salted hash of its group key.

    ids: the image ids of the fitting rows; ``group``: the manifest's ``val_group`` (``id`` or
    ``id_suffix``, as :func:`clinfo_ray.data.splits.val_mask`)."""
    if k < 2:
        raise ValueError(f"cross-validation needs k >= 2 folds, got {k}")
    keys = group_keys([str(i) for i in ids], group)
    digests = b"".join(hashlib.sha1(f"{FOLD_SALT}:{key}".encode()).digest()[:8] for key in keys)
    fraction = np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64  # (n,) in [0, 1)
    return np.minimum((fraction * k).astype(np.int64), k - 1)


def _with_setting(cfg: EvalConfig, weight_decay: float, epochs: int) -> EvalConfig:
    return dataclasses.replace(cfg, linear_weight_decay=weight_decay, linear_epochs=epochs)


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    cfg: EvalConfig,
    settings: Sequence[tuple[float, int]],
    seed: int = 0,
    *,
    device: str | torch.device,
) -> list[dict[str, Any]]:
    """Every setting's CV scores on the fitting rows x (n, D), y (n,) int (-1: unlabelled),
    folds (n,) int in 0..k-1: ``{"weight_decay", "epochs", "cv_top1", "train_top1"}`` per
    setting, in the order given (``train_top1``: of the folds' probes on their training rows,
    weighted by those rows)."""
    x, y, folds = np.asarray(x), np.asarray(y), np.asarray(folds)
    if folds.shape != y.shape:
        raise ValueError(f"folds: expected shape {y.shape} to match the labels, got {folds.shape}")
    held_out = [f for f in np.unique(folds) if (y[folds == f] >= 0).any()]
    if len(held_out) < 2:
        raise ValueError("cross-validation needs labelled rows in at least 2 folds")
    tried = []
    for weight_decay, epochs in settings:
        setting = _with_setting(cfg, weight_decay, epochs)
        hits, rows, train_hits, train_rows = 0, 0, 0.0, 0
        for f in held_out:
            inside = folds == f
            probe = train_probe(x[~inside], y[~inside], setting, seed, device=device)
            scores = probe.score(x[inside], y[inside], f"fold {f}")
            hits += round(float(scores["top1"]) * int(scores["rows"]))  # top1 = hits / rows
            rows += int(scores["rows"])
            train_hits += probe.train_top1 * probe.train_rows
            train_rows += probe.train_rows
        tried.append(
            {
                "weight_decay": weight_decay,
                "epochs": epochs,
                "cv_top1": hits / rows,
                "train_top1": train_hits / train_rows,
            }
        )
    return tried


def best_setting(tried: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The entry of the highest ``cv_top1``; of equals, the first."""
    return max(tried, key=lambda t: t["cv_top1"])  # max keeps the first of equals
