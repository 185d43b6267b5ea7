"""Pieces of a Parquet split: every row in exactly one piece, read back whole or permuted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clinfo_ray.data.read.parquet_pieces import (
    FILE,
    ROW_GROUP,
    START,
    STOP,
    list_pieces,
    read_pieces,
)


@pytest.fixture
def two_files(tmp_path: Path) -> list[str]:
    """ids 0..24 in a file of row groups 10/10/5, ids 25..31 in a file of one row group."""
    paths = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    pq.write_table(pa.table({"id": list(range(25)), "x": [0] * 25}), paths[0], row_group_size=10)
    pq.write_table(pa.table({"id": list(range(25, 32)), "x": [1] * 7}), paths[1])
    return paths


def test_pieces_cover_every_row_once_inside_row_groups(two_files):
    pieces = list_pieces(two_files, piece_rows=4)
    sizes = [p[STOP] - p[START] for p in pieces.to_pylist()]
    assert max(sizes) == 4 and sum(sizes) == 32
    # row groups of 10 rows: pieces 4 + 4 + 2, never one crossing a row-group boundary
    first = [p for p in pieces.to_pylist() if p[FILE] == two_files[0] and p[ROW_GROUP] == 0]
    assert [(p[START], p[STOP]) for p in first] == [(0, 4), (4, 8), (8, 10)]
    rows = read_pieces(pieces, ["id"]).column("id").to_pylist()
    assert rows == list(range(32))  # no rng: piece by piece, in the order given
    with pytest.raises(ValueError, match="piece_rows"):
        list_pieces(two_files, piece_rows=0)


def test_read_pieces_permutes_the_rows_of_the_pieces_given(two_files):
    pieces = list_pieces(two_files, piece_rows=4)
    chosen = pieces.take([8, 0, 3])  # pieces from both files, out of order
    plain = read_pieces(chosen, ["id", "x"]).column("id").to_pylist()
    assert plain == [25, 26, 27, 28, 0, 1, 2, 3, 10, 11, 12, 13]
    mixed = read_pieces(chosen, ["id", "x"], np.random.default_rng(0))
    assert sorted(mixed.column("id").to_pylist()) == sorted(plain)
    assert mixed.column("id").to_pylist() != plain
    assert mixed.column_names == ["id", "x"]
    with pytest.raises(ValueError, match="no pieces"):
        read_pieces(pieces.slice(0, 0), ["id"])


def test_row_groups_of_piece_rows_give_the_same_pieces_and_read_only_them(tmp_path):
    """prepare's row groups of PIECE_ROWS rows: the same pieces (rows and numbering, hence the
    same batches) as one large row group, and a piece's read is its own row group only."""
    from clinfo_ray.data.columns import PIECE_ROWS

    table = pa.table({"id": list(range(100)), "x": list(range(100, 200))})
    big, small = str(tmp_path / "big.parquet"), str(tmp_path / "small.parquet")
    pq.write_table(table, big, row_group_size=512)
    pq.write_table(table, small, row_group_size=PIECE_ROWS)
    by_big, by_small = list_pieces([big], PIECE_ROWS), list_pieces([small], PIECE_ROWS)
    assert by_big.num_rows == by_small.num_rows == -(-100 // PIECE_ROWS)
    order = np.random.default_rng(3).permutation(by_big.num_rows)
    for piece in order:  # piece by piece: the same rows
        one_big, one_small = by_big.slice(int(piece), 1), by_small.slice(int(piece), 1)
        assert read_pieces(one_big, ["id", "x"]).equals(read_pieces(one_small, ["id", "x"]))
        assert one_small[START][0].as_py() == 0  # a whole row group: nothing read in vain
    assert pq.ParquetFile(small).metadata.num_row_groups == by_small.num_rows


def test_a_file_written_again_is_read_again(tmp_path):
    """A process keeps the footers it read, by file, size and time: a file written again under
    the same name is listed and read anew, not through its old footer."""
    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.table({"id": [1, 2, 3]}), path)
    assert read_pieces(list_pieces([path], 2), ["id"]).column("id").to_pylist() == [1, 2, 3]
    pq.write_table(pa.table({"id": [7, 8, 9, 10, 11]}), path, row_group_size=4)
    pieces = list_pieces([path], 2)
    assert read_pieces(pieces, ["id"]).column("id").to_pylist() == [7, 8, 9, 10, 11]


def test_a_process_opens_a_file_once_and_lets_go_of_the_least_recent(tmp_path, monkeypatch):
    """Pieces read again (another task of the same process) reuse the file it opened: one open
    per file, not one per read; past the limit the least recently used file is let go."""
    from clinfo_ray.data.read import parquet_pieces

    monkeypatch.setattr(parquet_pieces, "_OPEN", type(parquet_pieces._OPEN)())
    monkeypatch.setattr(parquet_pieces, "_MAX_OPEN", 2)
    opened: list[str] = []
    real = parquet_pieces.loc.resolve

    def counting(location):
        filesystem, path = real(location)
        opened.append(path)
        return filesystem, path

    monkeypatch.setattr(parquet_pieces.loc, "resolve", counting)
    paths = [str(tmp_path / f"{n}.parquet") for n in range(3)]
    for n, path in enumerate(paths):
        pq.write_table(pa.table({"id": [10 * n, 10 * n + 1]}), path)
    pieces = list_pieces(paths, 1)
    opened.clear()
    for _ in range(2):
        assert read_pieces(pieces.slice(0, 4), ["id"]).column("id").to_pylist() == [0, 1, 10, 11]
    assert opened == paths[:2]  # two files, each opened once over both reads
    assert read_pieces(pieces.slice(4), ["id"]).column("id").to_pylist() == [20, 21]
    assert opened == paths  # the third file opened; the first, least recently used, let go
    assert [key[0] for key in parquet_pieces._OPEN] == paths[1:]
