"""Pieces of a Parquet split: short runs of consecutive rows inside one row group.

A piece is the unit the training stream puts in a random order every epoch: the driver lists
the pieces once from the Parquet footers (no data read), Ray Data shuffles the tiny piece
records, and each decode task reads its few pieces back itself (``read_pieces``), so the encoded
bytes never go through an all-to-all shuffle.

Reading a piece reads its whole row group (Parquet's smallest readable unit here: one data page
per column chunk); pieces of the same row group that land in the same task share one read.
``prepare`` writes row groups of ``columns.PIECE_ROWS`` rows, so a piece is one row group and
nothing is read in vain (from a bucket, every read is a request); a dataset written with larger
row groups is cut into the same pieces (the same rows, so the same batches), read with more
bytes.

A piece also carries its file's size and modification time (listed once by the driver), and
each process keeps the footers it has read by file, size and time: from a bucket a task then
costs one size request per file and one ranged read per row group (its columns fetched
together), instead of also reading each footer again and each column apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clinfo_ray.storage import location as loc

FILE, ROW_GROUP, START, STOP = "file", "row_group", "start", "stop"
SIZE, MTIME = "file_size", "file_mtime_ns"  # the file's, as listed (mtime -1: not known)
PIECE = "piece"  # optional int64 column of a pieces table: the piece's number in the split
PIECE_SCHEMA = pa.schema(
    [
        pa.field(FILE, pa.string(), nullable=False),
        pa.field(ROW_GROUP, pa.int32(), nullable=False),
        pa.field(START, pa.int64(), nullable=False),
        pa.field(STOP, pa.int64(), nullable=False),
        pa.field(SIZE, pa.int64(), nullable=False),
        pa.field(MTIME, pa.int64(), nullable=False),
    ]
)
_FOOTERS: dict[tuple[str, int, int], pq.FileMetaData] = {}  # this process's, see the doc
_MAX_FOOTERS = 1024


def list_pieces(files: Sequence[str], piece_rows: int) -> pa.Table:
    """Every row of ``files`` in exactly one piece of at most ``piece_rows`` rows, file order."""
    if piece_rows < 1:
        raise ValueError(f"piece_rows must be >= 1, got {piece_rows}")
    out: dict[str, list] = {name: [] for name in PIECE_SCHEMA.names}
    for path in files:
        info = loc.info(path)  # a local path or a URI (s3://...)
        with loc.open_parquet(path) as reader:
            meta = reader.metadata
        size, mtime = int(info.size), -1 if info.mtime_ns is None else int(info.mtime_ns)
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            for start in range(0, rows, piece_rows):
                out[FILE].append(path)
                out[ROW_GROUP].append(group)
                out[START].append(start)
                out[STOP].append(min(rows, start + piece_rows))
                out[SIZE].append(size)
                out[MTIME].append(mtime)
    return pa.table(out, schema=PIECE_SCHEMA)


def _open(location: str, size: int, mtime: int) -> tuple[pq.ParquetFile, pa.NativeFile]:
    """A reader of a listed file with the footer this process read before, if any (by name,
    size and time: a file written again is read again); the columns of a row group fetched in
    one go. The caller closes the file."""
    filesystem, path = loc.resolve(location)
    source = filesystem.open_input_file(path)
    key = (location, size, mtime)
    reader = pq.ParquetFile(source, metadata=_FOOTERS.get(key), pre_buffer=True)
    if key not in _FOOTERS:
        if len(_FOOTERS) >= _MAX_FOOTERS:
            _FOOTERS.clear()
        _FOOTERS[key] = reader.metadata
    return reader, source


def read_pieces(
    pieces: pa.Table,
    columns: Sequence[str],
    rng: np.random.Generator | None = None,
) -> pa.Table:
    """The rows of ``pieces`` (``columns`` only), each row group read once.

    With ``rng`` the rows come back in a uniformly random order (a permutation over all rows of
    all pieces given); without, piece by piece in the order given. When ``pieces`` has a
    ``PIECE`` column, every row carries its piece's number in a column of that name.
    """
    records = pieces.to_pylist()
    groups: dict[tuple[str, int], pa.Table] = {}
    files: dict[str, tuple[pq.ParquetFile, pa.NativeFile]] = {}
    parts = []
    try:
        for rec in records:
            key = (rec[FILE], rec[ROW_GROUP])
            if key not in groups:
                if rec[FILE] not in files:
                    files[rec[FILE]] = _open(rec[FILE], rec[SIZE], rec[MTIME])
                reader = files[rec[FILE]][0]
                groups[key] = reader.read_row_group(rec[ROW_GROUP], columns=list(columns))
            part = groups[key].slice(rec[START], rec[STOP] - rec[START])
            if PIECE in rec:
                numbers = pa.array([rec[PIECE]] * part.num_rows, pa.int64())
                part = part.append_column(PIECE, numbers)
            parts.append(part)
    finally:
        for _, source in files.values():
            source.close()
    if not parts:
        raise ValueError("read_pieces: no pieces given")
    table = pa.concat_tables(parts)
    if rng is not None:
        table = table.take(pa.array(rng.permutation(table.num_rows)))
    return table
