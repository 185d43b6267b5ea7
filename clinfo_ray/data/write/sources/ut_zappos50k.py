"""UT-Zappos50K in its published layout (users bring it; tests write a small fake of it).

``root/ut-zap50k-images[-square]/<Category>/<SubCategory>/<Brand>/<name>.jpg`` and
``root/ut-zap50k-data/meta-data-bin.csv`` (or ``root/meta-data-bin.csv``): a ``CID`` column
(``7965307-5291`` names the file ``7965307.5291.jpg``) and one 0/1 column per binary attribute.
Label = SubCategory (21 classes, the paper's downstream task), coarse label = Category (4), both
from the folder path; hierarchy = ``[Category, SubCategory]``. Tags = the names of the
attributes set to 1, except the ``Category.*`` and ``SubCategory.*`` columns, which would hand
the labels to the clusters. No official split: a stable hash of the CID puts ``test_fraction``
of the shoes in test.
"""

from __future__ import annotations

import csv
from pathlib import Path

from clinfo_ray.data.write.sources.source_table import (
    PrepareError,
    Skipped,
    SourceTable,
    hash_split,
    index_names,
    table_from_columns,
)

LABEL_PREFIXES = ("Category.", "SubCategory.")


def _find(root: Path, *candidates: str) -> Path:
    for name in candidates:
        if (root / name).exists():
            return root / name
    raise PrepareError(f"{root}: none of {list(candidates)} found")


def read_attributes(path: Path) -> dict[str, list[str]]:
    """CID -> names of the attributes set to 1 (label columns left out)."""
    out: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0].strip() != "CID":
            raise PrepareError(f"{path}:1: the first column must be CID")
        names = [h.strip() for h in header[1:]]
        for row in reader:
            if len(row) != len(header):
                raise PrepareError(
                    f"{path}:{reader.line_num}: expected {len(header)} fields, got {len(row)}"
                )
            bits = [v.strip() for v in row[1:]]
            if any(b not in ("0", "1") for b in bits):
                raise PrepareError(f"{path}:{reader.line_num}: attribute values must be 0 or 1")
            out[row[0].strip()] = [
                n
                for n, b in zip(names, bits, strict=True)
                if b == "1" and not n.startswith(LABEL_PREFIXES)
            ]
    return out


def load_ut_zappos50k(root: str | Path, *, test_fraction: float = 0.2) -> SourceTable:
    """Every image under the image folder; an image without an attribute row is skipped."""
    root = Path(root)
    images = _find(root, "ut-zap50k-images-square", "ut-zap50k-images", "images")
    meta = _find(root, "ut-zap50k-data/meta-data-bin.csv", "meta-data-bin.csv")
    attributes = read_attributes(meta)
    rows: list[tuple[str, str, str, str, str]] = []  # id, cid, file, subcategory, category
    skipped = []
    for file in sorted(images.rglob("*.jpg")):
        rel = file.relative_to(images)
        cid = file.stem.replace(".", "-")
        if len(rel.parts) < 3:
            skipped.append(Skipped(str(file), "not under <Category>/<SubCategory>/"))
        elif cid not in attributes:
            skipped.append(Skipped(str(file), f"CID {cid} not in {meta.name}"))
        else:
            rows.append((rel.as_posix(), cid, str(file), rel.parts[1], rel.parts[0]))
    labels, class_names = index_names([r[3] for r in rows])
    coarse, coarse_names = index_names([r[4] for r in rows])
    table = table_from_columns(
        [r[0] for r in rows],
        [hash_split(r[1], test_fraction) for r in rows],
        paths=[r[2] for r in rows],
        labels=labels,
        tags=[attributes[r[1]] for r in rows],
        coarse_labels=coarse,
        hierarchy=[[r[4], r[3]] for r in rows],
    )
    return SourceTable(table, class_names, coarse_names, skipped)
