"""Clusters from a label hierarchy cut at one depth, as the paper does with WordNet levels.

Each row lists its ancestors coarse to fine (the dataset's ``hierarchy`` column, e.g. emoji
``[category, subcategory]``). At ``level`` L the cluster of a row is its first L ancestors: level
1 groups by the coarsest ancestor, deeper levels split those groups. A row whose list is shorter
than L (or null), or whose first L ancestors include a null or empty name, is a singleton: nothing
says which other rows it belongs with at that depth.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .table import with_singletons


def hierarchy_clusters(hierarchy: pa.ChunkedArray | pa.Array, level: int) -> tuple[np.ndarray, int]:
    """((n,) int64 cluster ids 0..K-1, how many rows are singletons) for ``level`` >= 1.

    hierarchy: (n,) list<string>, coarse to fine. Two rows share a cluster exactly when their
    first ``level`` ancestors are equal, name by name.
    """
    if level < 1:
        raise ValueError(f"level must be >= 1, got {level}")
    lists = hierarchy.combine_chunks() if isinstance(hierarchy, pa.ChunkedArray) else hierarchy
    n = len(lists)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    deep = np.asarray(lengths >= level, dtype=bool)
    kept = lists.filter(pa.array(deep))
    flat = pc.list_flatten(kept)  # the kept rows' ancestors, row after row
    names = pc.dictionary_encode(flat)
    codes = pc.fill_null(names.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    empty = pc.fill_null(pc.equal(pc.utf8_length(flat), 0), True)
    codes[empty.to_numpy(zero_copy_only=False)] = -1  # "" names no ancestor
    kept_lengths = lengths[deep].astype(np.int64)
    starts = np.cumsum(kept_lengths) - kept_lengths  # where each kept row's list begins
    prefix = codes[starts[:, None] + np.arange(level)]  # (kept rows, level)
    row_codes = np.zeros(n, dtype=np.int64)
    alone = ~deep
    if prefix.size:
        _, inverse = np.unique(prefix, axis=0, return_inverse=True)
        row_codes[deep] = inverse.reshape(-1)
        alone[np.flatnonzero(deep)[(prefix < 0).any(axis=1)]] = True
    return with_singletons(row_codes, alone), int(alone.sum())
