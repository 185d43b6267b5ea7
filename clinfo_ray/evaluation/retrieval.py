"""Retrieval metrics of frozen features by label: recall@k and mAP@R.

Queries (e.g. the test split) search a gallery (the fitting rows) by cosine similarity (faiss
``IndexFlatIP`` on L2-normalised features, exact); a gallery row is relevant to a query when it
has the query's label.

* **recall@k** (the metric-learning sense, e.g. Song et al. 2016): the fraction of queries with
  at least one relevant row among their k nearest gallery rows.
* **mAP@R** (Musgrave et al. 2020, "A Metric Learning Reality Check"): for a query with R
  relevant gallery rows, AP@R = (1/R) Σ_{i=1..R} P(i)·rel(i) over its R nearest rows, where P(i)
  is the precision of the first i and rel(i) is 1 when the i-th is relevant; the mean over
  queries. It rewards ranking every relevant row first, not only the nearest one.

Queries whose label no gallery row has (R = 0) and unlabelled rows (label < 0) on either side
are left out, and counted. Ties in similarity follow faiss's order. Pure numpy + faiss; no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clinfo_ray.config import Device
from clinfo_ray.evaluation.knn import flat_index, l2_normalize

_QUERY_CHUNK = 4096  # queries per search: bounds the (chunk, depth) neighbour arrays


def retrieval_metrics(
    gallery_x: np.ndarray,
    gallery_y: np.ndarray,
    query_x: np.ndarray,
    query_y: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    *,
    device: Device = "cpu",
) -> dict[str, float]:
    """``recall_at_{k}`` for each k and ``map_at_r`` (fractions in [0, 1]), and ``queries``
    (how many were scored). gallery_x: (n, D), gallery_y: (n,) int; likewise the queries."""
    gallery_y, query_y = np.asarray(gallery_y, np.int64), np.asarray(query_y, np.int64)
    keep = gallery_y >= 0
    gallery, labels = l2_normalize(np.asarray(gallery_x)[keep]), gallery_y[keep]
    counts = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    relevant = np.array([counts.get(int(y), 0) for y in query_y], dtype=np.int64)
    scored = (query_y >= 0) & (relevant > 0)
    queries, query_labels, r = (
        l2_normalize(np.asarray(query_x)[scored]),
        query_y[scored],
        relevant[scored],
    )
    result = {f"recall_at_{k}": 0.0 for k in ks} | {"map_at_r": 0.0, "queries": float(len(r))}
    if not len(r):
        return result
    depth = int(min(max(max(ks), r.max()), len(labels)))
    index = flat_index(gallery, depth, device)
    hits = {k: 0 for k in ks}
    ap_sum = 0.0
    for start in range(0, len(r), _QUERY_CHUNK):
        _, found = index.search(queries[start : start + _QUERY_CHUNK], depth)  # (chunk, depth)
        rel = labels[found] == query_labels[start : start + _QUERY_CHUNK, None]  # (chunk, depth)
        for k in ks:
            hits[k] += int(rel[:, :k].any(axis=1).sum())
        rank = np.arange(1, depth + 1)
        precision = np.cumsum(rel, axis=1) / rank  # P(i)
        within = rank[None, :] <= r[start : start + _QUERY_CHUNK, None]  # the first R only
        ap = (precision * rel * within).sum(axis=1) / r[start : start + _QUERY_CHUNK]
        ap_sum += float(ap.sum())
    for k in ks:
        result[f"recall_at_{k}"] = hits[k] / len(r)
    result["map_at_r"] = ap_sum / len(r)
    return result
