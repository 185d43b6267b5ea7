"""``manifest.json``: what a prepared dataset folder holds; written last, so it means done.

A folder is a local path or a URI (``s3://bucket/emoji``): everything here goes through
:mod:`clinfo_ray.storage.location`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clinfo_ray.data import columns as C
from clinfo_ray.storage import location as loc


def check_format_version(found: object, folder: str | Path | None = None) -> None:
    """A dataset written by another format version cannot be read: say how to rewrite it."""
    if found == C.FORMAT_VERSION:
        return
    where = f"{folder}: " if folder is not None else ""
    raise ValueError(
        f"{where}format_version: this clinfo-ray reads dataset format {C.FORMAT_VERSION}, the "
        f"dataset has {found!r}; run `clinfo-ray prepare` again to rewrite it (format 2 added "
        "the `hierarchy` column and writes rows in a seeded random order)"
    )


@dataclass(frozen=True)
class Manifest:
    """The description of a prepared dataset folder.

    ``files`` maps a split to its Parquet shard names (relative to the folder); ``skipped`` lists
    ``{"source": ..., "reason": ...}`` for every input left out. ``row_order`` says how rows are
    ordered across the files: ``{"permutation_seed": S}`` when ``prepare`` wrote the source rows
    in the permutation ``numpy.random.default_rng(S).permutation(n)`` (so neighbouring rows are
    unrelated), empty for a folder written by hand in whatever order. ``val_group`` says how the
    validation split groups rows (:func:`clinfo_ray.data.splits.val_mask`): ``id`` (each row
    alone) or ``id_suffix`` (the multi-style emoji set: every rendering of one emoji together).
    """

    source: str
    rows: dict[str, int]
    class_names: list[str]
    coarse_class_names: list[str]
    tag_vocabulary_size: int
    skipped: list[dict[str, str]]
    files: dict[str, list[str]]
    format_version: int = C.FORMAT_VERSION
    options: dict[str, object] = field(default_factory=dict)
    row_order: dict[str, Any] = field(default_factory=dict)
    val_group: str = "id"

    def __post_init__(self) -> None:
        check_format_version(self.format_version)
        if self.val_group not in ("id", "id_suffix"):
            raise ValueError(f"val_group: 'id' or 'id_suffix', got {self.val_group!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def write(self, folder: str | Path) -> str:
        """Write ``folder/manifest.json`` atomically (after every shard: it means done)."""
        path = loc.join(folder, C.MANIFEST)
        loc.write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path


def read_manifest(folder: str | Path) -> Manifest:
    """Read ``folder/manifest.json``; a folder without one is not a (finished) dataset."""
    try:
        text = loc.read_text(loc.join(folder, C.MANIFEST))
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(
            f"{folder}: no {C.MANIFEST}; not a prepared clinfo-ray dataset (write it with "
            f"`clinfo-ray prepare SOURCE --out {folder}`; the quickstart's data/emoji: "
            "`clinfo-ray prepare emoji --out data/emoji`; `clinfo-ray prepare --help` lists "
            "the sources)"
        ) from None
    raw = json.loads(text)
    check_format_version(raw.get("format_version"), folder)  # before fields it may lack
    return Manifest(**raw)


def split_files(folder: str | Path, split: str) -> list[str]:
    """The Parquet shards of one split: absolute paths, or URIs for a folder given as one."""
    manifest = read_manifest(folder)
    if split not in manifest.files:
        raise ValueError(f"split: {split!r} is not in {sorted(manifest.files)}")
    return [loc.join(folder, name) for name in manifest.files[split]]


def sorted_ids(files: list[str]) -> pa.Array:
    """The image ids of a split's Parquet files, sorted: an image's ``index`` (what the stream,
    the cluster state and the validation mask use) is its position here."""
    filesystem, paths = loc.resolve_files(files)
    ids = pq.read_table(paths, columns=[C.ID], filesystem=filesystem).column(C.ID)
    return pc.take(ids, pc.sort_indices(ids)).combine_chunks()
