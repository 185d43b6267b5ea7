"""``clinfo-ray neighbors``: the nearest training images of test images against a brute-force
search written here, the picture the same bytes for the same seed, one-line errors (no Ray)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clinfo_ray.commands.main import main
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import Manifest
from clinfo_ray.evaluation.neighbors import nearest_neighbors, read_embeddings

N_TRAIN, N_TEST, DIM = 30, 12, 6


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (10, 14), (37 * i % 256, 90, 200, 128 + i)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    root.mkdir()
    n = N_TRAIN + N_TEST
    table = pa.table(
        {
            C.ID: [f"r{i:02d}" for i in range(n)],
            C.IMAGE: [_png(i) for i in range(n)],
            C.LABEL: [i % 3 for i in range(n)],
            C.TAGS: [[] for _ in range(n)],
            C.COARSE_LABEL: [0] * n,
            C.HIERARCHY: [None] * n,
            C.SPLIT: [C.TRAIN] * N_TRAIN + [C.TEST] * N_TEST,
        }
    ).cast(C.SCHEMA)
    pq.write_table(table.slice(0, N_TRAIN), root / "train-000000.parquet")
    pq.write_table(table.slice(N_TRAIN), root / "test-000000.parquet")
    Manifest(
        source="test",
        rows={C.TRAIN: N_TRAIN, C.TEST: N_TEST},
        class_names=["a", "b", "c"],
        coarse_class_names=["all"],
        tag_vocabulary_size=0,
        skipped=[],
        files={C.TRAIN: ["train-000000.parquet"], C.TEST: ["test-000000.parquet"]},
    ).write(root)
    return root


def _embeddings(folder: Path, seed: int, noise: float) -> np.ndarray:
    """Label-centred vectors (plus noise) in two shards, as clinfo-ray embed writes them."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    centres = rng.normal(size=(3, DIM))
    vectors = (centres[[i % 3 for i in range(n)]] + noise * rng.normal(size=(n, DIM))).astype(
        np.float32
    )
    folder.mkdir(parents=True)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)
    table = pa.table({C.ID: [f"r{i:02d}" for i in range(n)], "embedding": column})
    pq.write_table(table.slice(0, 17), folder / "part-0.parquet")
    pq.write_table(table.slice(17), folder / "part-1.parquet")
    return vectors


def test_the_neighbours_are_the_brute_force_nearest_training_images(
    dataset: Path, tmp_path: Path
) -> None:
    vectors = _embeddings(tmp_path / "a", 0, 2.0)
    queries, found, labels = nearest_neighbors(
        [read_embeddings(tmp_path / "a")], dataset, queries=5, k=4, seed=3
    )
    assert len(queries) == 5 and all(int(q[1:]) >= N_TRAIN for q in queries)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for query, hits in zip(queries, found["a"], strict=True):
        sims = unit[:N_TRAIN] @ unit[int(query[1:])]
        assert hits == [f"r{j:02d}" for j in np.argsort(-sims)[:4]]
    assert all(labels[i] == int(i[1:]) % 3 for i in labels)


def test_the_picture_is_the_same_bytes_for_the_same_seed(dataset: Path, tmp_path: Path) -> None:
    _embeddings(tmp_path / "clean", 0, 0.1)
    _embeddings(tmp_path / "noisy", 1, 5.0)
    args = ["neighbors", "--data", str(dataset), "--queries", "4", "--k", "3"]
    args += ["--embeddings", str(tmp_path / "clean"), "--embeddings", str(tmp_path / "noisy")]
    for name, seed in (("one.png", "0"), ("two.png", "0"), ("other.png", "1")):
        assert main([*args, "--seed", seed, "--out", str(tmp_path / name)]) == 0
    one = (tmp_path / "one.png").read_bytes()
    assert one.startswith(b"\x89PNG") and b"Software" not in one
    assert one == (tmp_path / "two.png").read_bytes()
    assert one != (tmp_path / "other.png").read_bytes()  # other queries


def test_the_green_share_is_the_label_agreement(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _embeddings(tmp_path / "clean", 0, 0.01)  # every neighbour shares the query's label
    out = tmp_path / "g.png"
    argv = ["neighbors", "--data", str(dataset), "--embeddings", str(tmp_path / "clean")]
    assert main([*argv, "--out", str(out), "--queries", "3", "--k", "5"]) == 0
    assert "clean: 1.000 of the neighbours share the query's label" in capsys.readouterr().out


def test_bad_input_fails_in_one_line(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["neighbors", "--data", str(dataset), "--out", str(tmp_path / "x.png")]
    assert main([*argv, "--embeddings", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "none: no embeddings" in err and "\n" not in err
    _embeddings(tmp_path / "a", 0, 1.0)
    assert main([*argv, "--embeddings", str(tmp_path / "a"), "--queries", "99"]) == 2
    assert "12 labelled test images" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_embeddings_dataset_and_picture_in_a_bucket(
    dataset: Path, tmp_path: Path, s3_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every location a URI (the session's S3 server): the same picture, byte for byte, as from
    local folders; a missing bucket is one line naming the key and the URI."""
    from clinfo_ray.storage import location as loc

    _embeddings(tmp_path / "clean", 0, 0.1)
    loc.upload_dir(dataset, loc.join(s3_prefix, "ds"))
    loc.upload_dir(tmp_path / "clean", loc.join(s3_prefix, "clean"))
    args = ["neighbors", "--queries", "4", "--k", "3"]
    local = [*args, "--data", str(dataset), "--embeddings", str(tmp_path / "clean")]
    assert main([*local, "--out", str(tmp_path / "local.png")]) == 0
    remote = [*args, "--data", loc.join(s3_prefix, "ds")]
    remote += ["--embeddings", loc.join(s3_prefix, "clean")]
    picture = loc.join(s3_prefix, "pictures", "grid.png")
    assert main([*remote, "--out", picture]) == 0
    assert loc.read_bytes(picture) == (tmp_path / "local.png").read_bytes()
    assert "clean: " in capsys.readouterr().out  # the set is named by its folder, as locally
    gone = "s3://no-such-bucket-here/clean"
    assert main([*remote[:-2], "--embeddings", gone, "--out", picture]) == 2
    err = capsys.readouterr().err.strip()
    assert "--embeddings" in err and gone in err and "no bucket" in err and "\n" not in err
