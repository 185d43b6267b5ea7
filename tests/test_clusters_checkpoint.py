"""`clinfo-ray clusters --method kmeans`: k-means of a checkpoint's embeddings, end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from clinfo_ray.checkpointing import load_model_from_checkpoint, save_checkpoint
from clinfo_ray.clusters.build import stats_path
from clinfo_ray.clusters.from_embeddings import (
    Embeddings,
    align_embeddings,
    embedding_kmeans_clusters,
)
from clinfo_ray.config import DataConfig, KMeansSettings, ModelConfig, TrainConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import split_files
from clinfo_ray.data.read.decode import decode_batch
from clinfo_ray.model import build_model
from tests.datasets import SHAPES_IMAGES

REPO = Path(__file__).resolve().parents[1]
SIZE = 16  # the checkpoint's data.image_size; the images are larger
N_IMAGES, K = SHAPES_IMAGES, 4


@pytest.fixture(scope="module")
def dataset(shapes_dataset: Path) -> Path:
    """The session's shapes dataset: 3 colours x 2 shapes, train and test."""
    return shapes_dataset


@pytest.fixture(scope="module")
def checkpoint(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small_cnn whose BatchNorm statistics are those of the dataset's images: with
    the default 0 / 1 statistics its projections of these images are all within cos 0.9998 of
    each other, too close for a nearest-centroid check in float32."""
    torch.manual_seed(0)
    cfg = TrainConfig(
        data=DataConfig(dataset_dir=str(dataset), image_size=SIZE),
        model=ModelConfig(backbone="small_cnn", cnn_width=4, proj_dim=16),
    )
    model = build_model(cfg.model)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one pass sets the statistics
    model.train()
    with torch.no_grad():
        model(decoded_images(dataset)[1])
    run = tmp_path_factory.mktemp("km_run")
    return save_checkpoint(run / "checkpoint_000001", model=model, epoch=1, step=5, config=cfg)


def decoded_images(dataset: Path) -> tuple[list[str], torch.Tensor, list[str]]:
    """(ids, images (n, 3, S, S) float in [0, 1], splits) of every image, split by split."""
    ids: list[str] = []
    splits: list[str] = []
    images = []
    for split in C.SPLITS:
        table = pq.read_table(split_files(dataset, split), columns=[C.ID, C.IMAGE])
        decoded, ok, _ = decode_batch(table.column(C.IMAGE).to_pylist(), SIZE)
        assert ok.all()
        images.append(torch.from_numpy(decoded).float() / 255.0)
        ids += table.column(C.ID).to_pylist()
        splits += [split] * table.num_rows
    return ids, torch.cat(images), splits


@pytest.fixture(scope="module")
def kmeans_table(dataset: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clinfo_ray.commands.main import main

    out = tmp_path_factory.mktemp("km_out") / "km.parquet"
    argv = ["clusters", "--data", str(dataset), "--method", "kmeans", "--checkpoint"]
    argv += [str(checkpoint), "--k", str(K), "--kmeans-niter", "50", "--kmeans-seed", "3"]
    argv += ["--kmeans-device", "cpu"]
    assert main([*argv, "--num-actors", "1", "--batch-size", "8", "--out", str(out)]) == 0
    return out


def reference_projections(dataset: Path, checkpoint: Path) -> tuple[list[str], np.ndarray, list]:
    """(ids, L2-normalised head output (n, P), splits) of every image, computed directly."""
    model, _ = load_model_from_checkpoint(checkpoint)  # eval mode
    ids, images, splits = decoded_images(dataset)
    with torch.no_grad():
        projections = model(images).projections
    return ids, F.normalize(projections, dim=-1).numpy(), splits


def test_table_has_one_row_per_image_and_contiguous_ids(kmeans_table: Path, dataset: Path) -> None:
    table = pq.read_table(kmeans_table)
    dataset_ids = pq.read_table(
        [f for s in C.SPLITS for f in split_files(dataset, s)], columns=[C.ID]
    )
    ids = table.column(C.ID).to_pylist()
    assert len(ids) == N_IMAGES and sorted(ids) == sorted(dataset_ids.column(C.ID).to_pylist())
    clusters = table.column(C.CLUSTER).to_numpy()
    assert table.schema.field(C.CLUSTER).type == pa.int64()
    num = int(clusters.max()) + 1
    assert 2 <= num <= K and set(clusters.tolist()) == set(range(num))


def test_stats_json_has_the_keys_of_the_other_methods(
    kmeans_table: Path, dataset: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    from clinfo_ray.commands.main import main

    labels_out = kmeans_table.with_name("labels.parquet")
    argv = ["clusters", "--data", str(dataset), "--method", "labels", "--out", str(labels_out)]
    assert main(argv) == 0
    stats = json.loads(Path(stats_path(kmeans_table)).read_text())
    assert set(stats) == set(json.loads(Path(stats_path(labels_out)).read_text()))
    assert stats["method"] == "kmeans" and stats["config"]["k"] == K
    assert stats["details"]["embeddings"] == str(checkpoint)
    assert stats["details"]["images_without_embedding"] == 0
    assert stats["details"]["embedding_dim"] == 16
    clusters = pq.read_table(kmeans_table).column(C.CLUSTER).to_numpy()
    assert stats["num_clusters_all_splits"] == int(clusters.max()) + 1
    assert 0.0 <= stats["mutual_information_bits"] <= stats["label_entropy_bits"] + 1e-9


def test_assignment_is_nearest_centroid_of_the_models_projections(
    kmeans_table: Path, dataset: Path, checkpoint: Path
) -> None:
    """At convergence spherical k-means is a fixed point: each centroid is the normalised mean
    of its train rows, and every row (test too) lies nearest its own cluster's centroid. Checked
    with projections computed here by model(...) on the same decoded images."""
    ids, vectors, splits = reference_projections(dataset, checkpoint)
    table = dict(zip(*pq.read_table(kmeans_table).to_pydict().values(), strict=True))
    clusters = np.array([table[i] for i in ids])
    train = np.array(splits) == C.TRAIN
    assert 0 < train.sum() < N_IMAGES
    num = int(clusters.max()) + 1
    centroids = np.stack([vectors[train & (clusters == c)].sum(0) for c in range(num)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)  # (num, P)
    scores = vectors @ centroids.T  # (n, num)
    top2 = np.sort(scores, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # near-ties may go either way in float32
    assert clear.sum() >= N_IMAGES - 2
    assert np.array_equal(scores.argmax(1)[clear], clusters[clear])
    # the embeddings were the head's output, not the encoder features: those are 32-d
    assert vectors.shape[1] == 16


def test_embedding_kmeans_recovers_planted_clusters_and_keeps_unembedded_rows() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3]  # 3 orthogonal directions
    truth = np.repeat(np.arange(3), 20)
    vectors = centres[truth] + 0.05 * rng.standard_normal((60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.array([f"r{i:02d}" for i in range(60)], dtype=object)
    keep = np.ones(60, dtype=bool)
    keep[[5, 40]] = False  # two images the inference pass could not decode
    shuffled = rng.permutation(np.flatnonzero(keep))
    emb = Embeddings(ids[shuffled], vectors[shuffled])
    aligned, has = align_embeddings(emb, pa.chunked_array([ids.tolist()]))
    assert np.array_equal(has, keep) and np.allclose(aligned[keep], vectors[keep])
    train = np.arange(60) % 4 != 0  # every 4th row is test: assigned, never fitted
    settings = KMeansSettings(seed=1, device="cpu")
    codes, details = embedding_kmeans_clusters(aligned, has, train, 3, settings)
    for c in range(3):
        assert len(set(codes[keep & (truth == c)].tolist())) == 1
    assert len(set(codes[keep].tolist())) == 3
    assert sorted(codes[~keep].tolist()) == [3, 4]  # singletons after the k-means clusters
    assert details["images_without_embedding"] == 2 and details["train_rows_clustered"] == 44
    with pytest.raises(ValueError, match=r"not in the dataset, e\.g\. 'zz'"):
        align_embeddings(Embeddings(np.array(["zz"]), vectors[:1]), pa.chunked_array([["r00"]]))
    with pytest.raises(ValueError, match="--k 50"):
        embedding_kmeans_clusters(aligned, has, train, 50, settings)


@pytest.mark.parametrize("broken", ["missing", "no_weights"])
def test_a_missing_or_incomplete_checkpoint_fails_naming_it(
    dataset: Path,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    broken: str,
) -> None:
    from clinfo_ray.commands.main import main

    bad = tmp_path / "checkpoint_bad"
    if broken == "no_weights":
        shutil.copytree(checkpoint, bad)
        (bad / "model.pt").unlink()
    out = tmp_path / "km.parquet"
    argv = ["clusters", "--data", str(dataset), "--method", "kmeans", "--checkpoint", str(bad)]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert ("no such checkpoint directory" if broken == "missing" else "model.pt") in err
    assert not out.exists()


def test_kmeans_without_a_checkpoint_is_a_usage_error(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from clinfo_ray.commands.main import main

    out = tmp_path / "km.parquet"
    assert main(["clusters", "--data", str(dataset), "--method", "kmeans", "--out", str(out)]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_job_entrypoint_reports_a_missing_checkpoint(dataset: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    cmd = [sys.executable, str(REPO / "jobs" / "clusters.py"), "--data", str(dataset)]
    cmd += ["--method", "kmeans", "--checkpoint", str(missing), "--out", str(tmp_path / "k.pq")]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2
    assert f"no such checkpoint directory: {missing}" in done.stderr
