"""Column names and types of the clinfo-ray dataset format (Parquet shards + manifest.json)."""

from __future__ import annotations

import pyarrow as pa

# 2: the `hierarchy` column, and rows written in a seeded permutation (manifest `row_order`).
FORMAT_VERSION = 2
MANIFEST = "manifest.json"

ID = "id"  # string, unique across the dataset
IMAGE = "image"  # binary: the encoded file's bytes (PNG, JPEG, ...)
LABEL = "label"  # int32, nullable: the downstream evaluation label
TAGS = "tags"  # list<string>, may be empty: the auxiliary information
COARSE_LABEL = "coarse_label"  # int32, nullable: one level up a label hierarchy
# list<string>, nullable, may be empty: the row's ancestors in a label hierarchy, coarse to fine
# (emoji: [category, subcategory]); the `hierarchy` cluster method cuts it at a depth
HIERARCHY = "hierarchy"
SPLIT = "split"  # string: "train" or "test"

TRAIN, TEST = "train", "test"
SPLITS = (TRAIN, TEST)

# Cluster assignment tables: id -> cluster (contiguous 0..K-1).
CLUSTER = "cluster"

SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(IMAGE, pa.binary(), nullable=False),
        pa.field(LABEL, pa.int32()),
        pa.field(TAGS, pa.list_(pa.string())),
        pa.field(COARSE_LABEL, pa.int32()),
        pa.field(HIERARCHY, pa.list_(pa.string())),
        pa.field(SPLIT, pa.string(), nullable=False),
    ]
)

CLUSTER_SCHEMA = pa.schema(
    [pa.field(ID, pa.string(), nullable=False), pa.field(CLUSTER, pa.int64(), nullable=False)]
)

# The training stream's unit of shuffling (data/read/parquet_pieces.py): rows per piece, and
# per Parquet row group as prepare writes them, so that a piece is read alone.
PIECE_ROWS = 32
