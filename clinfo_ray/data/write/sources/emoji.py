"""The built-in real dataset: emoji images with hashtags and a two-level label hierarchy.

Images: npm ``emoji-datasource-<style>@16.0.0`` (64×64 RGBA PNG per base emoji; skin-tone
variants are left out). Labels: ``subcategory`` (99 classes) is the label, ``category`` (10) the
coarse label; the hierarchy is ``[category, subcategory]``. Tags: the Unicode keywords of npm
``openmoji@17.0.0`` (``tags`` column), joined on the code points with the ``FE0F`` variation
selector dropped from both sides (an exact match misses about 200 emoji).

Split: by base emoji (a stable hash of the code points, so no emoji is in both splits), or, with
``test_style``, every rendering in that style is the test split and the other styles are train.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from clinfo_ray.data.write.sources.npm_cache import fetch_package
from clinfo_ray.data.write.sources.source_table import (
    PrepareError,
    Skipped,
    SourceTable,
    hash_split,
    index_names,
    table_from_columns,
)

log = logging.getLogger(__name__)

EMOJI_VERSION = "16.0.0"
OPENMOJI_SPEC = "openmoji@17.0.0"
STYLES = ("google", "apple", "twitter", "facebook")
IMAGE_PX = 64
# The terms of each style's images, as emoji-datasource's README states them (its code and
# emoji.json are MIT), and of openmoji's data; logged when a set is fetched, listed in the
# README's "Data licences" (tests/test_readme_claims.py checks that they agree).
STYLE_TERMS = {
    "google": "Apache License 2.0 (Google's Noto Emoji)",
    "twitter": "CC BY 4.0 (Twemoji): attribution required",
    "apple": "Copyright Apple Inc., not licensed for commercial use",
    "facebook": "Copyright Facebook, Inc., no clear licence",
}
OPENMOJI_TERMS = "CC BY-SA 4.0 (OpenMoji): attribution, share-alike"
RESTRICTED_STYLES = ("apple", "facebook")  # terms that do not allow every use


def code_points(hexcode: str) -> str:
    """``1F636-200D-1F32B-FE0F`` -> ``1F636-200D-1F32B``: the join key of both packages."""
    return "-".join(p for p in hexcode.upper().split("-") if p and p != "FE0F")


def read_openmoji_tags(csv_path: Path) -> dict[str, list[str]]:
    """Code points -> Unicode keywords (first row wins for a repeated code point)."""
    tags: dict[str, list[str]] = {}
    with csv_path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            words = [t.strip() for t in (row.get("tags") or "").split(",") if t.strip()]
            tags.setdefault(code_points(row["hexcode"]), list(dict.fromkeys(words)))
    return tags


def emoji_rows(
    emoji: list[dict[str, Any]],
    tags: dict[str, list[str]],
    image_dirs: dict[str, Path],
    *,
    test_fraction: float,
    test_style: str | None,
) -> SourceTable:
    """One row per (style, base emoji) from emoji.json entries, openmoji tags and image folders."""
    labels, class_names = index_names([e["subcategory"] for e in emoji])
    coarse, coarse_names = index_names([e["category"] for e in emoji])
    names = ("id", "split", "path", "label", "tags", "coarse", "hierarchy")
    cols: dict[str, list[Any]] = {k: [] for k in names}
    skipped: list[Skipped] = []
    for style, folder in image_dirs.items():
        for e, label, coarse_label in zip(emoji, labels, coarse, strict=True):
            key = code_points(e["unified"])
            if not e.get(f"has_img_{style}", False):
                skipped.append(Skipped(f"{style}/{e['image']}", f"no {style} rendering"))
                continue
            split = hash_split(key, test_fraction) if test_style is None else None
            cols["id"].append(f"{style}/{key}")
            cols["split"].append(split or ("test" if style == test_style else "train"))
            cols["path"].append(str(folder / e["image"]))
            cols["label"].append(label)
            cols["coarse"].append(coarse_label)
            cols["tags"].append(tags.get(key, []))
            cols["hierarchy"].append([e["category"], e["subcategory"]])
    rows = table_from_columns(
        cols["id"],
        cols["split"],
        paths=cols["path"],
        labels=cols["label"],
        tags=cols["tags"],
        coarse_labels=cols["coarse"],
        hierarchy=cols["hierarchy"],
    )
    # several renderings of an emoji: the validation split, like the test split, is per emoji
    val_group = "id_suffix" if len(image_dirs) > 1 else "id"
    return SourceTable(rows, class_names, coarse_names, skipped, val_group)


def load_emoji(
    *,
    styles: tuple[str, ...] = ("google",),
    test_fraction: float = 0.2,
    test_style: str | None = None,
    cache: str | Path | None = None,
) -> SourceTable:
    """Fetch (or reuse from ``cache``) the npm packages and list the emoji of ``styles``."""
    bad = [s for s in styles if s not in STYLES]
    if bad or not styles:
        raise PrepareError(f"styles must be a non-empty subset of {list(STYLES)}, got {bad}")
    if test_style is not None:
        if test_style not in STYLES:
            raise PrepareError(f"test_style must be one of {list(STYLES)}, got {test_style!r}")
        if set(styles) <= {test_style}:
            raise PrepareError(f"test_style {test_style!r} leaves no train style in {styles}")
        styles = tuple(dict.fromkeys((*styles, test_style)))
    folders = {s: fetch_package(f"emoji-datasource-{s}@{EMOJI_VERSION}", cache) for s in styles}
    for style in styles:
        level = logging.WARNING if style in RESTRICTED_STYLES else logging.INFO
        log.log(level, "emoji images of style %s: %s", style, STYLE_TERMS[style])
    log.info("emoji tags of %s: %s", OPENMOJI_SPEC, OPENMOJI_TERMS)
    emoji = json.loads((folders[styles[0]] / "package" / "emoji.json").read_text())
    tags = read_openmoji_tags(fetch_package(OPENMOJI_SPEC, cache) / "package/data/openmoji.csv")
    image_dirs = {s: f / "package" / "img" / s / str(IMAGE_PX) for s, f in folders.items()}
    return emoji_rows(emoji, tags, image_dirs, test_fraction=test_fraction, test_style=test_style)
