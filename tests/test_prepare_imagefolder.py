"""`prepare imagefolder`: images drawn here, real Parquet and Ray; bad input never crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clinfo_ray.commands.prepare import main as prepare_main
from clinfo_ray.config import PrepareConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import read_manifest, split_files
from clinfo_ray.data.write.prepare import prepare
from clinfo_ray.data.write.sources.imagefolder import load_imagefolder
from clinfo_ray.data.write.sources.source_table import PrepareError
from tests.datasets import draw_shapes, write_csv


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_rows(folder: Path) -> list[dict]:
    rows = []
    for split in C.SPLITS:
        for f in split_files(folder, split):
            rows += pq.read_table(f).to_pylist()
    return rows


def test_csv_folder_with_bad_images_is_written_and_skips_are_listed(ray_session, tmp_path):
    images = tmp_path / "photos"
    records = draw_shapes(images, 24)
    (images / "truncated.png").write_bytes((images / "img_000.png").read_bytes()[:60])
    (images / "not_an_image.png").write_text("hello, I am text")
    records += [
        {"path": "truncated.png", "tags": ["x"], "label": "circle"},
        {"path": "not_an_image.png", "tags": [], "label": None},
        {"path": "gone.png", "tags": ["y"], "label": "square"},
    ]
    out = tmp_path / "ds"
    m = prepare(
        PrepareConfig(
            "imagefolder",
            str(out),
            images=str(images),
            annotations=str(write_csv(tmp_path / "a.csv", records)),
            shard_size=7,
        )
    )
    assert m.rows[C.TRAIN] + m.rows[C.TEST] == 24
    assert m.class_names == ["circle", "square"]
    assert m.tag_vocabulary_size == 5  # 3 colours + 2 shapes (+ "x" dropped with its image)
    reasons = {Path(s["source"]).name: s["reason"] for s in m.skipped}
    assert set(reasons) == {"truncated.png", "not_an_image.png", "gone.png"}
    assert reasons["gone.png"].startswith("missing file")
    assert reasons["not_an_image.png"].startswith("undecodable image")
    assert len(m.files[C.TRAIN]) + len(m.files[C.TEST]) >= 4  # 24 rows in shards of 7
    rows = read_rows(out)
    by_id = {r[C.ID]: r for r in rows}
    assert len(by_id) == 24
    assert by_id["img_004.png"][C.TAGS] == ["green", "square"]
    assert by_id["img_004.png"][C.LABEL] == 1
    assert by_id["img_004.png"][C.IMAGE] == (images / "img_004.png").read_bytes()
    assert pq.read_schema(split_files(out, C.TRAIN)[0]).equals(C.SCHEMA)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_jsonl_with_explicit_split_and_jpeg(ray_session, tmp_path):
    images = tmp_path / "jpgs"
    records = draw_shapes(images, 10, fmt="JPEG")
    for i, r in enumerate(records):
        r["split"] = "test" if i < 3 else "train"
    out = tmp_path / "ds"
    m = prepare(
        PrepareConfig(
            "imagefolder",
            str(out),
            images=str(images),
            annotations=str(write_jsonl(tmp_path / "a.jsonl", records)),
        )
    )
    assert m.rows == {C.TRAIN: 7, C.TEST: 3}
    test_ids = {r[C.ID] for r in read_rows(out) if r[C.SPLIT] == C.TEST}
    assert test_ids == {"img_000.jpg", "img_001.jpg", "img_002.jpg"}
    assert read_manifest(out) == m


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("bad.csv", "path,tags,label\na.png,x,1\nb.png,y\n", "bad.csv:3"),
        ("bad.csv", "file,label\na.png,1\n", "bad.csv:1"),
        ("bad.jsonl", '{"path": "a.png", "tags": []}\n{"path": oops}\n', "bad.jsonl:2"),
        ("bad.jsonl", '{"path": "a.png", "tags": "not a list"}\n', "bad.jsonl:1"),
    ],
)
def test_malformed_annotations_name_file_and_line(tmp_path, name, text, where):
    draw_shapes(tmp_path / "img", 1)
    ann = tmp_path / name
    ann.write_text(text)
    config = PrepareConfig(
        "imagefolder", str(tmp_path / "out"), images=str(tmp_path / "img"), annotations=str(ann)
    )
    with pytest.raises(PrepareError, match=where):
        prepare(config)
    assert not (tmp_path / "out").exists()


def test_hierarchy_annotations_in_csv_and_jsonl(tmp_path):
    images = tmp_path / "img"
    draw_shapes(images, 3, size=16)
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(
        "path,tags,label,hierarchy\n"
        "img_000.png,red,circle,shape > round>circle\n"
        "img_001.png,green,circle,\n"
        "img_002.png,blue,circle,shape\n"
    )
    rows = load_imagefolder(images, csv_path).rows.to_pydict()
    assert rows[C.HIERARCHY] == [["shape", "round", "circle"], [], ["shape"]]
    jsonl = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"path": "img_000.png", "hierarchy": ["shape", "round"]},
            {"path": "img_001.png", "hierarchy": "shape>square"},
            {"path": "img_002.png"},
        ],
    )
    rows = load_imagefolder(images, jsonl).rows.to_pydict()
    assert rows[C.HIERARCHY] == [["shape", "round"], ["shape", "square"], []]
    csv_path.write_text("path,tags,hierarchy\nimg_000.png,red,shape>>circle\n")
    with pytest.raises(PrepareError, match=r"a\.csv:2: empty ancestor"):
        load_imagefolder(images, csv_path)


def test_duplicate_ids_are_an_error(tmp_path):
    records = draw_shapes(tmp_path / "img", 3)
    ann = write_csv(tmp_path / "a.csv", [*records, records[1]])
    config = PrepareConfig(
        "imagefolder", str(tmp_path / "out"), images=str(tmp_path / "img"), annotations=str(ann)
    )
    with pytest.raises(PrepareError, match=r"1 duplicate id.*img_001\.png"):
        prepare(config)


def test_cli_exit_codes_and_no_half_written_output(ray_session, tmp_path, capsys):
    records = draw_shapes(tmp_path / "img", 6)
    ann = write_csv(tmp_path / "a.csv", records)
    out = tmp_path / "ds"
    args = ["imagefolder", "--out", str(out), "--images", str(tmp_path / "img")]
    assert prepare_main([*args, "--annotations", str(ann)]) == 0
    assert "skipped 0" in capsys.readouterr().out
    before = sorted(p.name for p in out.iterdir())
    assert prepare_main([*args, "--annotations", str(ann)]) == 2  # exists, no --overwrite
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == before
    assert prepare_main([*args, "--annotations", str(tmp_path / "none.csv")]) == 2
    assert "annotation file not found" in capsys.readouterr().err
    # every image bad: nothing to write, no folder left behind
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    ann_bad = write_csv(tmp_path / "b.csv", [{"path": "a.png", "tags": ["t"]}])
    bad_args = ["imagefolder", "--out", str(tmp_path / "ds2"), "--images", str(bad)]
    code = prepare_main([*bad_args, "--annotations", str(ann_bad)])
    assert code == 2 and "could be read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv", "bad", "ds", "img"]
