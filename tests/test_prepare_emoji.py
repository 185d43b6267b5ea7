"""`prepare emoji`: the real npm packages (fetched once into the cache), real Parquet, real Ray."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from clinfo_ray.config import PrepareConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import split_files
from clinfo_ray.data.write.prepare import prepare
from clinfo_ray.data.write.sources.emoji import (
    EMOJI_VERSION,
    OPENMOJI_SPEC,
    code_points,
    emoji_rows,
    read_openmoji_tags,
)
from clinfo_ray.data.write.sources.npm_cache import default_cache, fetch_package
from clinfo_ray.data.write.sources.source_table import PrepareError

GOOGLE = f"emoji-datasource-google@{EMOJI_VERSION}"


@pytest.fixture(scope="module")
def emoji_dataset(ray_session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emoji") / "ds"
    prepare(PrepareConfig("emoji", str(out)))
    return out


@pytest.mark.ray
def test_emoji_dataset_has_every_base_emoji_with_labels_and_tags(emoji_dataset):
    manifest = json.loads((emoji_dataset / C.MANIFEST).read_text())
    assert manifest["rows"][C.TRAIN] + manifest["rows"][C.TEST] >= 1900
    assert 0.1 < manifest["rows"][C.TEST] / 1911 < 0.3
    assert len(manifest["class_names"]) == 99
    assert len(manifest["coarse_class_names"]) == 10
    assert manifest["tag_vocabulary_size"] > 3000
    tables = {s: pq.read_table(split_files(emoji_dataset, s)) for s in C.SPLITS}
    rows = [r for t in tables.values() for r in t.drop([C.IMAGE]).to_pylist()]
    assert all(r[C.TAGS] for r in rows), "every emoji has Unicode keywords"
    assert {r[C.LABEL] for r in rows} == set(range(99))
    grin = next(r for r in rows if r[C.ID] == "google/1F600")
    assert {"grin", "face", "smile"} <= set(grin[C.TAGS])
    assert manifest["class_names"][grin[C.LABEL]] == "face-smiling"
    assert manifest["coarse_class_names"][grin[C.COARSE_LABEL]] == "Smileys & Emotion"
    ids = {s: set(t.column(C.ID).to_pylist()) for s, t in tables.items()}
    assert not ids[C.TRAIN] & ids[C.TEST]
    img = Image.open(io.BytesIO(tables[C.TEST].column(C.IMAGE)[0].as_py()))
    assert img.size == (64, 64)
    # a row group per stream piece (parquet_pieces): the stream reads only the rows it uses
    shard = pq.ParquetFile(split_files(emoji_dataset, C.TRAIN)[0]).metadata
    groups = [shard.row_group(g).num_rows for g in range(shard.num_row_groups)]
    assert max(groups) == C.PIECE_ROWS and len(groups) == -(-shard.num_rows // C.PIECE_ROWS)


def test_cached_package_is_reused_without_npm(monkeypatch, tmp_path):
    folder = fetch_package(GOOGLE)  # downloads once, into the default cache
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH from here on
    assert fetch_package(GOOGLE) == folder
    monkeypatch.setenv("CLINFO_RAY_CACHE", str(tmp_path / "empty-cache"))
    assert default_cache() == tmp_path / "empty-cache"
    with pytest.raises(PrepareError, match="npm is not installed"):
        fetch_package(GOOGLE)


def test_split_by_style_keeps_classes_and_separates_styles():
    folder = fetch_package(GOOGLE) / "package"
    emoji = json.loads((folder / "emoji.json").read_text())
    tags = read_openmoji_tags(fetch_package(OPENMOJI_SPEC) / "package/data/openmoji.csv")
    images = folder / "img/google/64"
    # Two "styles" drawn from the same files: the split logic only needs the has_img flags.
    table = emoji_rows(
        emoji, tags, {"google": images, "twitter": images}, test_fraction=0.2, test_style="twitter"
    )
    rows = table.rows.to_pylist()
    test = [r for r in rows if r[C.SPLIT] == C.TEST]
    train = [r for r in rows if r[C.SPLIT] == C.TRAIN]
    assert len(train) == 1911 and all(r[C.ID].startswith("google/") for r in train)
    twitter = sum(bool(e["has_img_twitter"]) for e in emoji)
    assert len(test) == twitter and all(r[C.ID].startswith("twitter/") for r in test)
    assert len(table.skipped) == 1911 - twitter
    assert {r[C.LABEL] for r in test} <= {r[C.LABEL] for r in train}
    assert table.val_group == "id_suffix"  # several renderings: validation per emoji too


def test_emoji_hierarchy_is_category_then_subcategory(tmp_path):
    emoji = [
        {"unified": "1F600", "image": "1f600.png", "category": "Smileys & Emotion",
         "subcategory": "face-smiling", "has_img_google": True},
        {"unified": "1F98A", "image": "1f98a.png", "category": "Animals & Nature",
         "subcategory": "animal-mammal", "has_img_google": True},
    ]  # fmt: skip
    table = emoji_rows(emoji, {}, {"google": tmp_path}, test_fraction=0.0, test_style=None)
    rows = {r[C.ID]: r for r in table.rows.to_pylist()}
    assert rows["google/1F600"][C.HIERARCHY] == ["Smileys & Emotion", "face-smiling"]
    assert rows["google/1F98A"][C.HIERARCHY] == ["Animals & Nature", "animal-mammal"]
    assert table.val_group == "id"  # one style: the demo's validation rows stay as they were


def test_code_points_join_drops_the_variation_selector():
    assert code_points("2764-FE0F") == "2764"
    assert code_points("1f636-200d-1f32b-fe0f") == "1F636-200D-1F32B"


def test_bad_styles_are_refused():
    with pytest.raises(PrepareError, match="styles must be"):
        prepare(PrepareConfig("emoji", "/nonexistent/x", styles=("comic-sans",)))
    with pytest.raises(PrepareError, match="leaves no train style"):
        prepare(PrepareConfig("emoji", "/nonexistent/x", test_style="google"))
