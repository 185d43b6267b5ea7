"""`prepare cub200 / ut-zappos50k / fashion-mnist`: small fakes in the published layouts."""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clinfo_ray.config import ConfigError, PrepareConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import split_files
from clinfo_ray.data.write.prepare import list_source, prepare
from clinfo_ray.data.write.sources.source_table import (
    PrepareError,
    SourceTable,
    keep_train_per_class,
    table_from_columns,
)
from tests.datasets import draw_shapes

pytestmark = pytest.mark.ray


def rows(folder: Path) -> dict[str, dict]:
    out = {}
    for split in C.SPLITS:
        for f in split_files(folder, split):
            out.update({r[C.ID]: r for r in pq.read_table(f).drop([C.IMAGE]).to_pylist()})
    return out


def fake_cub(root: Path) -> Path:
    draw_shapes(root / "images" / "001.Black_footed_Albatross", 3)
    draw_shapes(root / "images" / "002.Laysan_Albatross", 2)
    rels = [f"001.Black_footed_Albatross/img_00{i}.png" for i in range(3)]
    rels += [f"002.Laysan_Albatross/img_00{i}.png" for i in range(2)] + [
        "002.Laysan_Albatross/x.png"
    ]
    (root / "images.txt").write_text("".join(f"{i + 1} {r}\n" for i, r in enumerate(rels)))
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 1\n4 2\n5 2\n6 2\n")
    (root / "train_test_split.txt").write_text("1 1\n2 1\n3 0\n4 1\n5 0\n6 1\n")
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    (root.parent / "attributes.txt").write_text(
        "1 has_bill_shape::dagger\n2 has_wing_color::blue\n"
    )
    (root / "attributes").mkdir()
    lines = [f"{i} {a} {int((i + a) % 2 == 0)} 3 1.5\n" for i in range(1, 7) for a in (1, 2)]
    (root / "attributes" / "image_attribute_labels.txt").write_text("".join(lines))
    return root


def test_cub200_layout(ray_session, tmp_path):
    root = fake_cub(tmp_path / "CUB_200_2011")
    out = tmp_path / "ds"
    m = prepare(PrepareConfig("cub200", str(out), images=str(root)))
    assert m.rows == {C.TRAIN: 3, C.TEST: 2}
    assert m.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert [s["reason"] for s in m.skipped] == ["missing file (images.txt id 6)"]
    r = rows(out)
    first = r["001.Black_footed_Albatross/img_000.png"]  # image 1: 1+1 even -> attribute 1
    assert first[C.TAGS] == ["has_bill_shape::dagger"] and first[C.LABEL] == 0
    assert first[C.HIERARCHY] == []  # CUB-200 ships no hierarchy
    assert r["002.Laysan_Albatross/img_001.png"][C.SPLIT] == C.TEST
    assert r["002.Laysan_Albatross/img_000.png"][C.TAGS] == ["has_wing_color::blue"]


def test_cub200_bad_attribute_line(tmp_path):
    root = fake_cub(tmp_path / "CUB_200_2011")
    (root / "attributes" / "image_attribute_labels.txt").write_text("1 1 1 3 1.0\n2 1\n")
    with pytest.raises(PrepareError, match=r"image_attribute_labels\.txt:2"):
        prepare(PrepareConfig("cub200", str(tmp_path / "ds"), images=str(root)))


def test_ut_zappos50k_layout(ray_session, tmp_path):
    images = tmp_path / "ut-zap50k-images"
    for folder, names in {
        "Shoes/Oxfords/Bostonian": ["100627.72"],
        "Boots/Ankle/Frye": ["7965307.5291", "1.2"],
    }.items():
        d = images / folder
        d.mkdir(parents=True)
        for n in names:
            Image.new("RGB", (30, 20), (200, 10, 10)).save(d / f"{n}.jpg")
    (tmp_path / "meta-data-bin.csv").write_text(
        "CID,Category.Shoes,SubCategory.Oxfords,Closure.Lace up,Gender.Men\n"
        "100627-72,1,1,1,1\n7965307-5291,0,0,0,1\n"
    )
    out = tmp_path / "ds"
    m = prepare(PrepareConfig("ut-zappos50k", str(out), images=str(tmp_path)))
    assert m.rows[C.TRAIN] + m.rows[C.TEST] == 2
    assert m.class_names == ["Ankle", "Oxfords"] and m.coarse_class_names == ["Boots", "Shoes"]
    assert [Path(s["source"]).name for s in m.skipped] == ["1.2.jpg"]
    r = rows(out)
    assert r["Shoes/Oxfords/Bostonian/100627.72.jpg"][C.TAGS] == ["Closure.Lace up", "Gender.Men"]
    assert r["Boots/Ankle/Frye/7965307.5291.jpg"][C.COARSE_LABEL] == 0
    assert r["Boots/Ankle/Frye/7965307.5291.jpg"][C.HIERARCHY] == ["Boots", "Ankle"]
    assert r["Shoes/Oxfords/Bostonian/100627.72.jpg"][C.HIERARCHY] == ["Shoes", "Oxfords"]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    out = tmp_path / "ds"
    m = prepare(PrepareConfig("fashion-mnist", str(out), images=str(tmp_path)))
    assert m.rows == {C.TRAIN: 12, C.TEST: 5} and m.class_names[9] == "Ankle boot"
    table = pq.read_table(split_files(out, C.TRAIN))
    first = table.filter(table.column(C.ID).to_numpy() == "train/00003").to_pylist()[0]
    assert first[C.LABEL] == 3
    pixels = np.asarray(Image.open(io.BytesIO(first[C.IMAGE])))
    rng = np.random.default_rng(0)
    assert np.array_equal(pixels, rng.integers(0, 256, (12, 28, 28))[3].astype(np.uint8))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x01"))
    with pytest.raises(PrepareError, match="not a uint8 idx file"):
        prepare(PrepareConfig("fashion-mnist", str(tmp_path / "ds2"), images=str(tmp_path)))


def test_train_per_class_keeps_a_subset_fixed_by_the_ids(tmp_path):
    """No Ray: the subset is listed before any image is read."""
    for split, n in (("train", 40), ("t10k", 5)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 4)
    config = PrepareConfig("fashion-mnist", str(tmp_path / "ds"), images=str(tmp_path))
    full = list_source(config).rows.to_pylist()
    subset = list_source(dataclasses.replace(config, train_per_class=3)).rows.to_pylist()
    train = [r for r in subset if r[C.SPLIT] == C.TRAIN]
    assert sorted(Counter(r[C.LABEL] for r in train).values()) == [3, 3, 3, 3]
    assert [r[C.ID] for r in subset if r[C.SPLIT] == C.TEST] == [f"test/{i:05d}" for i in range(5)]
    assert {r[C.ID] for r in train} < {r[C.ID] for r in full}
    again = list_source(dataclasses.replace(config, train_per_class=3, seed=7)).rows
    assert again.column(C.ID).to_pylist() == [r[C.ID] for r in subset]
    other = list_source(dataclasses.replace(config, train_per_class=9)).rows.to_pylist()
    assert {r[C.ID] for r in train} < {r[C.ID] for r in other}  # a larger subset extends it
    everything = list_source(dataclasses.replace(config, train_per_class=10)).rows
    assert everything.num_rows == len(full)


def test_train_per_class_needs_labels():
    rows = table_from_columns(["a", "b"], [C.TRAIN, C.TRAIN], data=[b"x", b"y"], labels=[0, None])
    with pytest.raises(PrepareError, match="'b' has none"):
        keep_train_per_class(SourceTable(rows), 1)
    with pytest.raises(ConfigError, match="train_per_class"):
        PrepareConfig("fashion-mnist", "out", train_per_class=0)
