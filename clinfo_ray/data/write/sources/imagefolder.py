"""Any folder of images plus an annotation file: "my photos and their hashtags".

Annotations are CSV with a header ``path,tags,label`` (tags separated by ``|``; ``label``, and
the optional ``coarse_label``, ``hierarchy`` and ``split`` columns, may be empty) or JSON Lines
with one object per line ``{"path": ..., "tags": [...], "label": ...}``. ``path`` is relative to
the image folder. ``hierarchy`` lists the image's ancestors coarse to fine, ``animal>bird>owl``
(in JSON Lines also a list of strings); empty means none. The image id is the path. Rows without
a ``split`` go to train or test by a stable hash of the id.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from clinfo_ray.data import columns as C
from clinfo_ray.data.write.sources.source_table import (
    PrepareError,
    Skipped,
    SourceTable,
    check_unique_ids,
    hash_split,
    index_names,
    table_from_columns,
)

REQUIRED_CSV_COLUMNS = ("path", "tags")


def _csv_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or any(c not in header for c in REQUIRED_CSV_COLUMNS):
            raise PrepareError(f"{path}:1: CSV header must contain {list(REQUIRED_CSV_COLUMNS)}")
        header = [h.strip() for h in header]
        records = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise PrepareError(
                    f"{path}:{reader.line_num}: expected {len(header)} fields, got {len(row)}"
                )
            rec: dict[str, Any] = dict(zip(header, row, strict=True))
            rec["tags"] = [t.strip() for t in rec["tags"].split("|") if t.strip()]
            records.append((reader.line_num, rec))
    return records


def _jsonl_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    records = []
    with path.open(encoding="utf-8") as f:
        for line_num, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise PrepareError(f"{path}:{line_num}: not JSON: {err.msg}") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
                raise PrepareError(f'{path}:{line_num}: expected an object with a "path" string')
            tags = rec.get("tags", [])
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise PrepareError(f'{path}:{line_num}: "tags" must be a list of strings')
            records.append((line_num, rec))
    return records


def _name(value: Any) -> str | None:
    """A label cell as a class name; empty means missing."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def parse_hierarchy(value: Any, where: str) -> list[str]:
    """``"a>b>c"`` or ``["a", "b", "c"]`` -> ``["a", "b", "c"]``; empty or missing -> ``[]``.
    An empty ancestor between two others (``a>>c``) is an error: it would shift the levels."""
    if value is None or value == "":
        return []
    parts = value.split(">") if isinstance(value, str) else value
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise PrepareError(f'{where}: "hierarchy" must be "a>b>c" or a list of strings')
    names = [p.strip() for p in parts]
    if not all(names):
        raise PrepareError(f"{where}: empty ancestor in hierarchy {value!r}")
    return names


def read_annotations(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every annotation; a malformed file fails naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{path}: annotation file not found")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return _jsonl_records(path)
    return _csv_records(path)


def load_imagefolder(
    images: str | Path, annotations: str | Path, *, test_fraction: float = 0.2
) -> SourceTable:
    """List the annotated images; a missing file is skipped, a bad split value is an error."""
    images = Path(images)
    if not images.is_dir():
        raise PrepareError(f"{images}: image folder not found")
    records = read_annotations(annotations)
    check_unique_ids([rec["path"] for _, rec in records])
    kept: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    for line_num, rec in records:
        file = images / rec["path"]
        if not file.is_file():
            skipped.append(Skipped(str(file), f"missing file (annotation line {line_num})"))
            continue
        split = _name(rec.get("split")) or hash_split(rec["path"], test_fraction)
        if split not in C.SPLITS:
            raise PrepareError(f"{annotations}:{line_num}: split must be train or test: {split!r}")
        hierarchy = parse_hierarchy(rec.get("hierarchy"), f"{annotations}:{line_num}")
        kept.append({**rec, "file": str(file), "split": split, "hierarchy": hierarchy})
    labels, class_names = index_names([_name(r.get("label")) for r in kept])
    coarse, coarse_names = index_names([_name(r.get("coarse_label")) for r in kept])
    rows = table_from_columns(
        [r["path"] for r in kept],
        [r["split"] for r in kept],
        paths=[r["file"] for r in kept],
        labels=labels,
        tags=[list(r.get("tags", [])) for r in kept],
        coarse_labels=coarse,
        hierarchy=[r["hierarchy"] for r in kept],
    )
    return SourceTable(rows, class_names, coarse_names, skipped)
