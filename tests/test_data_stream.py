"""The Ray Data stream of views: clusters, equal batches, new order per epoch, dropped images,
the worker-side (GPU option) augmentation on CPU tensors, and a 2-worker Ray Train run."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from clinfo_ray.data import columns as C
from clinfo_ray.data.augment import ViewAugmentation
from clinfo_ray.data.prepare import PrepareConfig, prepare
from clinfo_ray.data.stream import DropCounter, build_view_stream, iter_views
from tests.test_prepare_imagefolder import draw_shapes, write_csv

pytestmark = pytest.mark.ray

AUG = ViewAugmentation(size=16, views=2)
N_GOOD = 40


@pytest.fixture(scope="module")
def shapes_dataset(ray_session, tmp_path_factory) -> Path:
    """40 drawn shapes, all train, plus one row whose bytes are not an image (written by hand,
    as if the file went bad after prepare)."""
    root = tmp_path_factory.mktemp("shapes")
    records = draw_shapes(root / "img", N_GOOD, size=24)
    for r in records:
        r["split"] = "train"
    ann = root / "a.csv"
    write_csv(ann, records)
    text = ann.read_text().replace("path,tags,label", "path,tags,label,split")
    lines = text.splitlines()
    ann.write_text("\n".join([lines[0]] + [f"{ln},train" for ln in lines[1:]]) + "\n")
    out = root / "ds"
    prepare(PrepareConfig("imagefolder", str(out), images=str(root / "img"), annotations=str(ann)))
    bad = pa.Table.from_pylist(
        [
            {
                C.ID: "broken.png",
                C.IMAGE: b"\x89PNG not really",
                C.LABEL: None,
                C.TAGS: [],
                C.COARSE_LABEL: None,
                C.SPLIT: C.TRAIN,
            }
        ],
        schema=C.SCHEMA,
    )
    pq.write_table(bad, out / "train-999999.parquet")
    manifest = json.loads((out / C.MANIFEST).read_text())
    manifest["files"][C.TRAIN].append("train-999999.parquet")
    (out / C.MANIFEST).write_text(json.dumps(manifest))
    return out


def sorted_ids(folder: Path) -> list[str]:
    good = pq.read_table(folder / "train-000000.parquet").column(C.ID).to_pylist()
    return sorted([*good, "broken.png"])


def epoch(ds, **kw) -> list[dict[str, torch.Tensor]]:
    return list(iter_views(ds, batch_size=8, **kw))


@pytest.mark.parametrize(
    ("shuffle", "cache_decoded"), [("pieces", False), ("full", False), ("pieces", True)]
)
def test_views_clusters_and_dropped_images(shapes_dataset, shuffle, cache_decoded):
    ids = sorted_ids(shapes_dataset)
    clusters = pa.table({C.ID: ids, C.CLUSTER: [len(i) % 3 for i in ids]})  # any id -> int
    drops = DropCounter.create()
    ds = build_view_stream(
        shapes_dataset,
        augmentation=AUG,
        clusters=clusters,
        drops=drops,
        decode_batch_size=16,
        cache_decoded=cache_decoded,
        shuffle=shuffle,
        piece_rows=4,
    )
    batches = epoch(ds)
    assert len(batches) == N_GOOD // 8  # the broken row is gone, every batch full
    b = batches[0]
    assert b["views"].shape == (8, 2, 3, 16, 16) and b["views"].dtype == torch.float32
    assert 0.0 <= b["views"].min() and b["views"].max() <= 1.0
    index = torch.cat([x["index"] for x in batches])
    assert sorted(index.tolist()) == [i for i, name in enumerate(ids) if name != "broken.png"]
    for x in batches:
        want = [len(ids[i]) % 3 for i in x["index"].tolist()]
        assert x["cluster"].tolist() == want
        assert x["label"].dtype == torch.int64 and set(x["label"].tolist()) <= {0, 1}
    assert drops.count() == 1
    assert drops.recent()[0][0] == "broken.png"
    second = torch.cat([x["index"] for x in epoch(ds)])
    assert sorted(second.tolist()) == sorted(index.tolist())
    assert second.tolist() != index.tolist()  # a new order every epoch


def test_instance_clusters_by_default_and_gpu_path_on_cpu(shapes_dataset):
    ds = build_view_stream(shapes_dataset, augmentation=AUG, augment_on="worker", shuffle=False)
    with pytest.raises(ValueError, match="augmentation="):
        epoch(ds)
    batches = epoch(ds, augmentation=AUG, device="cpu")
    assert len(batches) == N_GOOD // 8
    for x in batches:
        assert torch.equal(x["cluster"], x["index"])  # every image its own cluster
        assert x["views"].shape == (8, 2, 3, 16, 16) and x["views"].dtype == torch.float32
        assert not torch.equal(x["views"][:, 0], x["views"][:, 1])


def test_piece_order_is_new_every_epoch_and_mixes_rows(shapes_dataset):
    """Every image once per epoch, a different order each time, and neighbouring rows of the
    Parquet do not stay neighbours (the rows of a task are permuted, not only the pieces)."""
    ds = build_view_stream(
        shapes_dataset, augmentation=AUG, decode_batch_size=16, piece_rows=4, shuffle="pieces"
    )
    orders = [torch.cat([x["index"] for x in epoch(ds)]).tolist() for _ in range(3)]
    for order in orders:
        assert len(order) == len(set(order)) == N_GOOD
        assert set(order) == set(orders[0])
    assert len({tuple(o) for o in orders}) == 3
    steps = [abs(a - b) for o in orders for a, b in itertools.pairwise(o)]
    assert sum(s == 1 for s in steps) < len(steps) / 2  # mostly not file order


def test_unshuffled_stream_keeps_rows_within_a_block_in_order(shapes_dataset):
    ds = build_view_stream(
        shapes_dataset, augmentation=AUG, decode_batch_size=8, piece_rows=4, shuffle=False
    )
    ids = sorted_ids(shapes_dataset)
    file_ids = pq.read_table(shapes_dataset / "train-000000.parquet").column(C.ID).to_pylist()
    file_order = ",".join(str(ids.index(i)) for i in file_ids)
    blocks = [b["index"].tolist() for b in ds.iter_torch_batches(batch_size=None)]
    assert sorted(i for b in blocks for i in b) == sorted(ids.index(i) for i in file_ids)
    for b in blocks:
        if b:
            assert ",".join(map(str, b)) in file_order  # a run of the file, in file order


def test_cluster_table_missing_ids_is_an_error(shapes_dataset):
    ids = sorted_ids(shapes_dataset)[:-3]
    table = pa.table({C.ID: ids, C.CLUSTER: [0] * len(ids)})
    with pytest.raises(ValueError, match="3 image id"):
        build_view_stream(shapes_dataset, augmentation=AUG, clusters=table)
    with pytest.raises(ValueError, match="shuffle must be"):
        build_view_stream(shapes_dataset, augmentation=AUG, shuffle="rows")
    with pytest.raises(ValueError, match="cluster must be integer"):
        bad = pa.table({C.ID: ids, C.CLUSTER: [0.5] * len(ids)})
        build_view_stream(shapes_dataset, augmentation=AUG, clusters=bad)


def _loop(config: dict) -> None:
    import torch.distributed as dist

    seen = []
    for batch in iter_views(batch_size=4):
        assert batch["views"].shape == (4, 2, 3, 16, 16)
        seen.append(batch["index"])
    mine = torch.cat(seen)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(mine)]))
    parts = [torch.zeros(int(sizes[0]), dtype=torch.int64) for _ in sizes]
    dist.all_gather(parts, mine)
    if dist.get_rank() == 0:  # Train V2 keeps metrics only with checkpoints: write a file
        result = {
            "sizes": [int(s) for s in sizes],
            "index": torch.cat(parts).tolist(),
            "dropped": config["drops"].count(),
        }
        Path(config["out"]).write_text(json.dumps(result))


def test_stream_feeds_two_ray_train_workers(shapes_dataset, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    drops = DropCounter.create()
    ds = build_view_stream(shapes_dataset, augmentation=AUG, drops=drops, decode_batch_size=8)
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"drops": drops, "out": str(tmp_path / "seen.json")},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        datasets={"train": ds},
        run_config=RunConfig(storage_path=str(tmp_path), name="stream_smoke"),
    )
    trainer.fit()
    metrics = json.loads((tmp_path / "seen.json").read_text())
    assert metrics["sizes"][0] == metrics["sizes"][1] >= 16  # equal shards, whole batches
    index = metrics["index"]
    assert len(set(index)) == len(index)  # no image on both workers
    assert metrics["dropped"] == 1
    drops.close()
    with pytest.raises(ray.exceptions.RayActorError):
        drops.count()


def test_worker_cache_loads_the_whole_decoded_split_once(shapes_dataset):
    """data.cache 'worker': the unsplit, unshuffled, cached stream read into memory holds every
    good image once, in index order, with the pixels the stream decoded."""
    from clinfo_ray.data.stream import IMAGE_U8
    from clinfo_ray.data.worker_cache import InMemorySplit

    ds = build_view_stream(
        shapes_dataset, augmentation=AUG, augment_on="worker", shuffle="none", cache_decoded=True
    )
    split = InMemorySplit.load(ds)
    ids = sorted_ids(shapes_dataset)
    assert split.index.tolist() == [i for i, name in enumerate(ids) if name != "broken.png"]
    streamed = {
        int(i): img
        for b in ds.iter_torch_batches(batch_size=None)
        for i, img in zip(b["index"], b[IMAGE_U8], strict=True)
    }
    for row, i in enumerate(split.index.tolist()):
        assert torch.equal(split.images[row], streamed[i])
    batches = list(split.batches(epoch=1, seed=0, rank=0, world=1, batch_size=8, augmentation=AUG))
    assert len(batches) == N_GOOD // 8 and batches[0]["views"].shape == (8, 2, 3, 16, 16)
