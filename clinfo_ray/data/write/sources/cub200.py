"""CUB-200-2011 in its published layout (users bring it; tests write a small fake of it).

``root/images.txt`` (``image_id relative_path``), ``image_class_labels.txt`` (``image_id
class_id``), ``train_test_split.txt`` (``image_id is_train``), ``classes.txt`` (``class_id
name``), ``attributes.txt`` (``attribute_id name``; in the archive it sits one folder up, both
places are looked at) and ``attributes/image_attribute_labels.txt`` (``image_id attribute_id
is_present certainty_id time``). Label = class (200); the present binary attributes are the tags.
"""

from __future__ import annotations

from pathlib import Path

from clinfo_ray.data import columns as C
from clinfo_ray.data.write.sources.source_table import (
    PrepareError,
    Skipped,
    SourceTable,
    table_from_columns,
)


def read_pairs(path: Path, *, fields: int = 2) -> list[tuple[int, list[str]]]:
    """(line number, first ``fields`` whitespace-separated fields); short lines are errors."""
    if not path.is_file():
        raise PrepareError(f"{path}: not found (is this the CUB_200_2011 folder?)")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=fields - 1) if fields == 2 else line.split()
        if len(parts) < fields:
            raise PrepareError(f"{path}:{n}: expected {fields} fields, got {len(parts)}")
        out.append((n, parts[:fields]))
    return out


def _int_map(path: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for n, (key, value) in read_pairs(path):
        if not key.isdigit():
            raise PrepareError(f"{path}:{n}: id must be an integer, got {key!r}")
        out[int(key)] = value.strip()
    return out


def _attribute_tags(root: Path) -> dict[int, list[str]]:
    names_file = next(
        (p for p in (root / "attributes.txt", root.parent / "attributes.txt") if p.is_file()),
        root / "attributes" / "attributes.txt",
    )
    names = _int_map(names_file)
    tags: dict[int, list[str]] = {}
    labels_file = root / "attributes" / "image_attribute_labels.txt"
    for n, (image, attr, present) in read_pairs(labels_file, fields=3):
        if not (image.isdigit() and attr.isdigit() and present in ("0", "1")):
            raise PrepareError(f"{labels_file}:{n}: expected image_id attribute_id 0|1")
        if present == "1":
            tags.setdefault(int(image), []).append(names[int(attr)])
    return tags


def load_cub200(root: str | Path) -> SourceTable:
    """All 11,788 images (or as many as listed), with the official train/test split."""
    root = Path(root)
    paths = _int_map(root / "images.txt")
    classes = _int_map(root / "image_class_labels.txt")
    is_train = _int_map(root / "train_test_split.txt")
    class_names = _int_map(root / "classes.txt")
    tags = _attribute_tags(root)
    ids, splits, files, labels, tag_lists = [], [], [], [], []
    skipped = []
    for image_id, rel in sorted(paths.items()):
        file = root / "images" / rel
        if not file.is_file():
            skipped.append(Skipped(str(file), f"missing file (images.txt id {image_id})"))
            continue
        ids.append(rel)
        splits.append(C.TRAIN if is_train.get(image_id) == "1" else C.TEST)
        files.append(str(file))
        labels.append(int(classes[image_id]) - 1)  # class ids are 1-based
        tag_lists.append(tags.get(image_id, []))
    rows = table_from_columns(ids, splits, paths=files, labels=labels, tags=tag_lists)
    names = [class_names[k] for k in sorted(class_names)]
    return SourceTable(rows, names, [], skipped)
