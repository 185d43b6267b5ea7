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
each process keeps, by file, size and time, the footers it has read and the files it has opened
(at most ``_MAX_OPEN`` kept open, the least recently used let go first): from a bucket a row group
then costs one ranged read (its columns fetched together) and nothing else once the process has
met its file, instead of also a size request per file and task, the footer again and each
column apart. Reads of an opened file are positional (``ReadAt``), so the threads of one
process share it. A file written again has another size or time, so another key: it is opened
and its footer read anew.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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
Key = tuple[str, int, int]  # (location, size, mtime_ns) as listed
_FOOTERS: dict[Key, pq.FileMetaData] = {}  # this process's, see the doc
_MAX_FOOTERS = 1024
_OPEN: OrderedDict[Key, pa.NativeFile] = OrderedDict()  # this process's open files, LRU first
_MAX_OPEN = 64  # a local file holds a descriptor; a bucket's holds nothing but its size
_OPEN_LOCK = threading.Lock()


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


def _source(key: Key) -> pa.NativeFile:
    """The listed file, opened once by this process (the least recently used let go past
    ``_MAX_OPEN``)."""
    with _OPEN_LOCK:
        source = _OPEN.get(key)
        if source is not None:
            _OPEN.move_to_end(key)
            return source
    filesystem, path = loc.resolve(key[0])
    source = filesystem.open_input_file(path)
    with _OPEN_LOCK:
        _OPEN[key] = source
        while len(_OPEN) > _MAX_OPEN:  # dropped, not closed: a thread may still read it (the
            _OPEN.popitem(last=False)  # file closes when its last reference goes)
    return source


def _open(location: str, size: int, mtime: int) -> pq.ParquetFile:
    """A reader of a listed file, opened and its footer read before by this process if it was
    (by name, size and time: a file written again is read again); the columns of a row group
    fetched in one go."""
    key = (location, size, mtime)
    reader = pq.ParquetFile(_source(key), metadata=_FOOTERS.get(key), pre_buffer=True)
    if key not in _FOOTERS:
        if len(_FOOTERS) >= _MAX_FOOTERS:
            _FOOTERS.clear()
        _FOOTERS[key] = reader.metadata
    return reader


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
    files: dict[str, pq.ParquetFile] = {}
    parts = []
    for rec in records:
        key = (rec[FILE], rec[ROW_GROUP])
        if key not in groups:
            if rec[FILE] not in files:
                files[rec[FILE]] = _open(rec[FILE], rec[SIZE], rec[MTIME])
            groups[key] = files[rec[FILE]].read_row_group(rec[ROW_GROUP], columns=list(columns))
        part = groups[key].slice(rec[START], rec[STOP] - rec[START])
        if PIECE in rec:
            numbers = pa.array([rec[PIECE]] * part.num_rows, pa.int64())
            part = part.append_column(PIECE, numbers)
        parts.append(part)
    if not parts:
        raise ValueError("read_pieces: no pieces given")
    table = pa.concat_tables(parts)
    if rng is not None:
        table = table.take(pa.array(rng.permutation(table.num_rows)))
    return table
