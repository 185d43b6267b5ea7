"""What every source hands to the shard writer: one row per image, before the image is read.

A source only lists its images (a file path or the encoded bytes), their labels, tags and split;
the writer reads and checks the images in parallel. Problems a source can see on its own (an
annotation naming a missing file) go to ``skipped`` right away.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from clinfo_ray.data import columns as C

PATH = "path"  # string, nullable: a file to read the encoded image from
DATA = "data"  # binary, nullable: the encoded image itself (when there is no file)

SOURCE_SCHEMA = pa.schema(
    [
        pa.field(C.ID, pa.string(), nullable=False),
        pa.field(PATH, pa.string()),
        pa.field(DATA, pa.binary()),
        pa.field(C.LABEL, pa.int32()),
        pa.field(C.TAGS, pa.list_(pa.string())),
        pa.field(C.COARSE_LABEL, pa.int32()),
        pa.field(C.HIERARCHY, pa.list_(pa.string())),
        pa.field(C.SPLIT, pa.string(), nullable=False),
    ]
)


class PrepareError(Exception):
    """A dataset cannot be prepared; the message is the one-line reason the command prints."""


@dataclass(frozen=True)
class Skipped:
    """One input left out of the dataset, and why."""

    source: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


@dataclass
class SourceTable:
    """The images of a source, listed but not yet read (``rows`` follows ``SOURCE_SCHEMA``)."""

    rows: pa.Table
    class_names: list[str] = field(default_factory=list)
    coarse_class_names: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    val_group: str = "id"  # how the validation split groups rows (Manifest.val_group)

    def __post_init__(self) -> None:
        self.rows = self.rows.select(SOURCE_SCHEMA.names).cast(SOURCE_SCHEMA)
        check_unique_ids(self.rows.column(C.ID).to_pylist())
        bad = set(self.rows.column(C.SPLIT).unique().to_pylist()) - set(C.SPLITS)
        if bad:
            raise PrepareError(f"split must be one of {C.SPLITS}, got {sorted(bad)}")


def check_unique_ids(ids: Sequence[str]) -> None:
    """Duplicate ids are an error: cluster tables and checkpoints refer to images by id."""
    if len(set(ids)) == len(ids):
        return
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    raise PrepareError(f"{len(dupes)} duplicate id(s), e.g. {dupes[0]!r}")


def hash_unit(key: str, salt: str) -> float:
    """A number in [0, 1) from a stable hash of ``salt:key``: uniform over keys, fixed per key."""
    digest = hashlib.sha1(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hash_split(key: str, test_fraction: float, *, salt: str = "clinfo-ray") -> str:
    """``train`` or ``test`` from a stable hash of ``key``: the same key always lands the same."""
    return C.TEST if hash_unit(key, salt) < test_fraction else C.TRAIN


def keep_train_per_class(source: SourceTable, per_class: int) -> SourceTable:
    """``source`` with at most ``per_class`` train rows of each label: those whose ids hash
    lowest (salt ``clinfo-ray-subset``), so the subset is fixed by the ids alone. Test rows are
    all kept. (The rows left out are not "skipped": nothing is wrong with them; the manifest
    records ``train_per_class`` among its options and the split's count.)"""
    rows = source.rows
    splits = rows.column(C.SPLIT).to_pylist()
    labels = rows.column(C.LABEL).to_pylist()
    ids = rows.column(C.ID).to_pylist()
    unlabelled = [
        i for i, s, y in zip(ids, splits, labels, strict=True) if s == C.TRAIN and y is None
    ]
    if unlabelled:
        raise PrepareError(
            f"train_per_class needs a label on every train row; {unlabelled[0]!r} has none"
        )
    order = sorted(
        (i for i, s in enumerate(splits) if s == C.TRAIN),
        key=lambda i: hash_unit(ids[i], "clinfo-ray-subset"),
    )
    taken: Counter[int] = Counter()
    keep = [s != C.TRAIN for s in splits]
    for i in order:
        if taken[labels[i]] < per_class:
            taken[labels[i]] += 1
            keep[i] = True
    return dataclasses.replace(source, rows=rows.filter(pa.array(keep)))


def index_names(names: Iterable[str | None]) -> tuple[list[int | None], list[str]]:
    """Map names to int ids in sorted-name order; ``None`` stays ``None`` (a missing label)."""
    classes = sorted({n for n in names if n is not None})
    lookup = {n: i for i, n in enumerate(classes)}
    return [None if n is None else lookup[n] for n in names], classes


def table_from_columns(
    ids: list[str],
    splits: list[str],
    *,
    paths: Sequence[str | None] | None = None,
    data: Sequence[bytes | None] | None = None,
    labels: Sequence[int | None] | None = None,
    tags: Sequence[list[str]] | None = None,
    coarse_labels: Sequence[int | None] | None = None,
    hierarchy: Sequence[list[str]] | None = None,
) -> pa.Table:
    """Build a ``SOURCE_SCHEMA`` table from per-row lists (missing columns become nulls; missing
    tags and hierarchy become empty lists)."""
    n = len(ids)
    nulls: list[None] = [None] * n
    return pa.table(
        {
            C.ID: ids,
            PATH: paths if paths is not None else nulls,
            DATA: data if data is not None else nulls,
            C.LABEL: labels if labels is not None else nulls,
            C.TAGS: tags if tags is not None else [[] for _ in range(n)],
            C.COARSE_LABEL: coarse_labels if coarse_labels is not None else nulls,
            C.HIERARCHY: hierarchy if hierarchy is not None else [[] for _ in range(n)],
            C.SPLIT: splits,
        },
        schema=SOURCE_SCHEMA,
    )
