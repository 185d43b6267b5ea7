"""Clusters from free-form tags: the paper's top-k binary attributes, and TF-IDF + k-means.

Tags are read as a sparse presence matrix (row, tag) built with pyarrow, never as Python lists
per row, so that 10^6 images with long tag lists stay cheap. Vocabularies, ranks and idf come
from the train split; every row (train and test) gets a cluster.

Untagged rows: in `tags-kmeans` a row without a vocabulary tag has a zero TF-IDF vector, which
says nothing about what it resembles, so it is its own (singleton) cluster, as a row without a
label is in the `labels` method: one shared "no tags" cluster would make every untagged image of
a real hashtag set a false positive of every other. In `tags` (the paper's binary attributes) an
empty tag list is the all-zero attribute row and shares the all-zero cluster; see
`top_k_tag_clusters`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clinfo_ray.config import ClustersConfig

from .kmeans import fit_and_assign
from .table import contiguous, with_singletons

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TagPresence:
    """Sparse (row, tag) presence pairs, sorted by row then tag, each pair once.

    train: (n,) bool, the rows of the train split.
    vocabulary: the tags seen in the train split (after include / exclude), sorted.
    train_frequency: (V,) int64, how many train rows carry each tag.
    """

    train: np.ndarray
    vocabulary: list[str]
    train_frequency: np.ndarray
    rows: np.ndarray  # (nnz,) int64
    cols: np.ndarray  # (nnz,) int64, indices into vocabulary

    @property
    def num_rows(self) -> int:
        return int(self.train.size)

    @property
    def num_train_rows(self) -> int:
        return int(self.train.sum())

    @property
    def has_tags(self) -> np.ndarray:
        """(n,) bool: rows carrying at least one vocabulary tag."""
        mask = np.zeros(self.num_rows, dtype=bool)
        mask[self.rows] = True
        return mask


def tag_presence(
    tags: pa.ChunkedArray | pa.Array,
    train: np.ndarray,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> TagPresence:
    """Which row carries which tag. Tags are whitespace-trimmed; empty strings are dropped."""
    tags = tags.combine_chunks() if isinstance(tags, pa.ChunkedArray) else tags
    train = np.asarray(train, dtype=bool)
    if train.shape != (len(tags),):
        raise ValueError(f"train mask has shape {train.shape}, tags {len(tags)} rows")
    flat = pc.utf8_trim_whitespace(pc.list_flatten(tags))
    parents = pc.list_parent_indices(tags).to_numpy().astype(np.int64)
    keep = pc.fill_null(pc.greater(pc.utf8_length(flat), 0), False)
    flat, parents = pc.filter(flat, keep), parents[keep.to_numpy(zero_copy_only=False)]
    in_train = train[parents]
    vocabulary = set(pc.unique(pc.filter(flat, pa.array(in_train))).to_pylist())
    if include:
        absent = sorted(set(include) - vocabulary)
        if absent:
            log.warning("%d included tags never occur in the train split, e.g. %r", *_n_eg(absent))
        vocabulary &= set(include)
    vocabulary -= set(exclude)
    ordered = sorted(vocabulary)
    cols = pc.index_in(flat, value_set=pa.array(ordered, type=pa.string()))
    known = cols.is_valid().to_numpy(zero_copy_only=False)
    width = max(len(ordered), 1)
    # one code per (row, tag): np.unique drops repeated tags and sorts by row, then tag
    codes = parents[known] * width + cols.to_numpy(zero_copy_only=False)[known].astype(np.int64)
    rows, cols_np = np.divmod(np.unique(codes), width)
    frequency = np.bincount(cols_np[train[rows]], minlength=len(ordered)).astype(np.int64)
    return TagPresence(train, ordered, frequency, rows, cols_np)


def rank_tags(presence: TagPresence, rank_by: str = "entropy") -> np.ndarray:
    """Vocabulary indices, best first: by the entropy of the tag's presence bit on the train
    split (tags near 50 % first, the paper's choice) or by frequency; ties by tag name."""
    count = presence.train_frequency.astype(np.float64)
    if rank_by == "frequency":
        score = count
    elif rank_by == "entropy":
        p = count / max(presence.num_train_rows, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            bits = -(p * np.log2(p)) - ((1 - p) * np.log2(1 - p))
        score = np.nan_to_num(bits, nan=0.0)
    else:
        raise ValueError(f"rank_by must be 'entropy' or 'frequency', got {rank_by!r}")
    # lexsort: last key first; the vocabulary is sorted, so index order is name order
    return np.lexsort((np.arange(score.size), -score)).astype(np.int64)


def top_k_tag_clusters(
    presence: TagPresence, top_k: int, rank_by: str = "entropy"
) -> tuple[np.ndarray, list[str]]:
    """The paper's construction: the top_k tags as binary attributes, one cluster per distinct
    combination of the k bits that occurs. Returns ((n,) int64 clusters 0..K-1, the k tags).

    Rows with none of the k tags, untagged rows included, form one cluster (the all-zero code,
    cluster 0 when there are any). That is the paper's construction, kept on purpose: "none of
    these k attributes" is an attribute combination like any other, and the attribute sources
    (UT-Zappos50K, CUB-200) write a row as the names of its 1-bits, so an empty tag list *is*
    the all-zero row there; it cannot be told apart from "no information". For free-form
    hashtags, where an untagged image says nothing, use `tags-kmeans` (untagged rows are
    singletons there); build_clusters reports the size of the all-zero cluster either way.
    Cluster ids follow the sorted bit codes (bit i = the i-th ranked tag).
    """
    size = len(presence.vocabulary)
    if top_k > size:
        raise ValueError(
            f"--top-k {top_k} is larger than the number of tags: the train split has {size} "
            "distinct tags (after --tags-include / --tags-exclude)"
        )
    if not 1 <= top_k <= 62:
        raise ValueError(f"--top-k must be in 1..62 (bits of an int64 code), got {top_k}")
    chosen = rank_tags(presence, rank_by)[:top_k]
    bit_of_tag = np.full(size, -1, dtype=np.int64)
    bit_of_tag[chosen] = np.arange(top_k)
    bits = bit_of_tag[presence.cols]
    selected = bits >= 0
    codes = np.zeros(presence.num_rows, dtype=np.int64)
    np.bitwise_or.at(codes, presence.rows[selected], np.left_shift(1, bits[selected]))
    return contiguous(codes), [presence.vocabulary[i] for i in chosen]


def tfidf_vectors(
    presence: TagPresence,
    *,
    max_dense_bytes: int = 1 << 30,
    projection_dim: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """(n, d) float32 L2-normalised TF-IDF bag-of-tags vectors; rows without tags are zero.

    tf is presence (0/1); idf = ln((1 + N) / (1 + df)) + 1 with N and df from the train split.
    d = V (dense) when an (n, V) float32 matrix fits in max_dense_bytes; otherwise a Gaussian
    random projection to projection_dim, which keeps cosine similarities approximately.
    """
    n, size = presence.num_rows, len(presence.vocabulary)
    idf = np.log((1 + presence.num_train_rows) / (1 + presence.train_frequency)) + 1.0
    weights = idf[presence.cols].astype(np.float32)  # (nnz,)
    if n * size * 4 <= max_dense_bytes:
        x = np.zeros((n, size), dtype=np.float32)
        x[presence.rows, presence.cols] = weights
    else:
        log.info("TF-IDF: (%d, %d) is too large dense; projecting to %d", n, size, projection_dim)
        x = _project(presence, weights, projection_dim, seed)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def tags_kmeans_clusters(presence: TagPresence, config: ClustersConfig) -> np.ndarray:
    """Spherical k-means of the TF-IDF vectors into ``config.k`` clusters (``config.kmeans``;
    its seed also draws the projection, ``config.tfidf_*``): fit on the train rows, assign every
    row to its nearest centroid. Rows without a vocabulary tag (``~presence.has_tags``: their
    TF-IDF vector is zero, so no centroid is nearer than another) are singletons after the k
    clusters. (n,) int64, ids 0..K-1."""
    x = tfidf_vectors(
        presence,
        max_dense_bytes=config.tfidf_max_dense_bytes,
        projection_dim=config.tfidf_projection_dim,
        seed=config.kmeans.seed_value,
    )
    has_tags = presence.has_tags
    fit_rows = np.flatnonzero(has_tags & presence.train)
    if config.k > fit_rows.size:
        raise ValueError(
            f"--k {config.k} is larger than the number of tagged train rows, {fit_rows.size}"
        )
    clusters = np.zeros(presence.num_rows, dtype=np.int64)
    tagged = np.flatnonzero(has_tags)
    clusters[tagged] = fit_and_assign(x, fit_rows, tagged, config.k, config.kmeans)
    return with_singletons(clusters, ~has_tags)


def _project(
    presence: TagPresence, weights: np.ndarray, dim: int, seed: int, block: int = 65536
) -> np.ndarray:
    """Sparse TF-IDF rows times a (V, dim) Gaussian matrix, a block of rows at a time
    (peak memory O(entries in a block * dim))."""
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((len(presence.vocabulary), dim), dtype=np.float32)
    out = np.zeros((presence.num_rows, dim), dtype=np.float32)
    bounds = np.searchsorted(presence.rows, np.arange(0, presence.num_rows + block, block))
    for lo, hi in itertools.pairwise(bounds):
        if lo == hi:
            continue
        rows = presence.rows[lo:hi]
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])  # first entry of each row
        products = weights[lo:hi, None] * projection[presence.cols[lo:hi]]  # (entries, dim)
        out[rows[starts]] = np.add.reduceat(products, starts, axis=0)
    return out


def _n_eg(values: Sequence[str]) -> tuple[int, str]:
    return len(values), values[0]
