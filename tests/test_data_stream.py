"""The streamed training input: equal batches of index, label and views, a new order per epoch
that repeats under the same seed, disjoint rank shares, dropped images, held-out rows, the
worker-side augmentation, a 2-worker Ray Train run; and the clusters of each streamed index
(clusters.assignment), read from a table apart from the stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from clinfo_ray.clusters.assignment import clusters_by_index, train_ids
from clinfo_ray.clusters.table import ClusterTableError
from clinfo_ray.data import columns as C
from clinfo_ray.data.read.augment import ViewAugmentation
from clinfo_ray.data.read.drop_counter import DropCounter
from clinfo_ray.data.read.stream import IMAGE_U8, StreamPlan
from clinfo_ray.distributed import until_any_rank_ends
from tests.datasets import SHAPES_TRAIN, train_split_with_undecodable_row

pytestmark = pytest.mark.ray

AUG = ViewAugmentation(size=16, views=2)
N_GOOD = SHAPES_TRAIN  # the train rows of the session's shapes dataset, all decodable
STREAMED = {"views", "label", "index"}  # what a training batch carries: no cluster


@pytest.fixture(scope="module")
def shapes_dataset(shapes_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The train split of the session's shapes dataset (the conftest fixture of this name), all
    train, plus one row "broken.png" whose bytes are not an image: as if the file went bad
    after prepare."""
    out = tmp_path_factory.mktemp("stream") / "ds"
    return train_split_with_undecodable_row(shapes_dataset, out)


def sorted_ids(folder: Path) -> list[str]:
    good = pq.read_table(folder / "train-000000.parquet").column(C.ID).to_pylist()
    return sorted([*good, "broken.png"])


def plan_of(folder: Path, **kw) -> StreamPlan:
    return StreamPlan.build(folder, **{"augmentation": AUG, "piece_rows": 4, "task_rows": 16, **kw})


def epoch(plan: StreamPlan, number: int = 1, **kw) -> list[dict[str, torch.Tensor]]:
    return list(plan.iter_epoch(number, **{"batch_size": 8, **kw}))


def indices(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    return torch.cat([b["index"] for b in batches]).tolist()


def write_clusters(path: Path, ids: list[str], clusters: list) -> str:
    pq.write_table(pa.table({C.ID: ids, C.CLUSTER: clusters}), path)
    return str(path)


@pytest.mark.parametrize("cache", [False, True])
def test_views_clusters_and_dropped_images(shapes_dataset, cache, tmp_path):
    ids = sorted_ids(shapes_dataset)
    assert train_ids(shapes_dataset).to_pylist() == ids  # an image's index is its place here
    # any id -> cluster (contiguous), written in an order of its own
    want = {name: n % 3 for n, name in enumerate(sorted(ids, key=lambda i: i[::-1]))}
    table = write_clusters(tmp_path / "t.parquet", list(want)[::-1], list(want.values())[::-1])
    clusters = clusters_by_index(shapes_dataset, table)
    assert clusters.dtype == np.int64 and clusters.shape == (len(ids),)
    drops = DropCounter.create()
    plan = plan_of(shapes_dataset, drops=drops, cache=cache)
    batches = epoch(plan)
    assert len(batches) == N_GOOD // 8  # the broken row is gone, every batch full
    b = batches[0]
    assert set(b) == STREAMED
    assert b["views"].shape == (8, 2, 3, 16, 16) and b["views"].dtype == torch.float32
    assert 0.0 <= b["views"].min() and b["views"].max() <= 1.0
    assert sorted(indices(batches)) == [i for i, name in enumerate(ids) if name != "broken.png"]
    for x in batches:
        index = x["index"].tolist()
        assert clusters[index].tolist() == [want[ids[i]] for i in index]
        assert x["label"].dtype == torch.int64 and set(x["label"].tolist()) <= {0, 1}
    assert drops.count() == 1
    assert drops.recent()[0][0] == "broken.png"
    second = indices(epoch(plan, 2))
    assert sorted(second) == sorted(indices(batches))
    assert second != indices(batches)  # a new order every epoch


@pytest.mark.parametrize("augment_on", ["ray_data", "worker"])
def test_the_same_seed_gives_the_same_batches_and_another_seed_others(shapes_dataset, augment_on):
    """Every draw (piece order, rows in a task, the buffer, the crops) comes from the seed:
    the same epoch twice is identical to the bit, cached or not; another seed differs."""
    in_tasks = AUG if augment_on == "ray_data" else None
    on_worker = None if in_tasks else AUG
    runs = [
        epoch(
            plan_of(shapes_dataset, augmentation=in_tasks, decode_size=16, seed=s, cache=c),
            augmentation=on_worker,
        )
        for s, c in [(7, False), (7, False), (7, True), (8, False)]
    ]
    for other in runs[1:3]:
        assert indices(other) == indices(runs[0])
        assert all(torch.equal(a["views"], b["views"]) for a, b in zip(runs[0], other, strict=True))
    assert indices(runs[3]) != indices(runs[0])


def test_ranks_take_disjoint_shares_and_stop_together(shapes_dataset):
    plan = plan_of(shapes_dataset)
    shares = [indices(epoch(plan, 3, rank=r, world=2, batch_size=4)) for r in (0, 1)]
    assert not set(shares[0]) & set(shares[1])
    assert len(shares[0]) + len(shares[1]) >= N_GOOD - 2 * 4  # at most a partial batch each
    assert shares != [indices(epoch(plan, 4, rank=r, world=2, batch_size=4)) for r in (0, 1)]
    # one process: until_any_rank_ends is the plain iterator
    assert len(list(until_any_rank_ends(iter(range(3)), torch.device("cpu")))) == 3


def test_held_out_rows_are_never_streamed(shapes_dataset):
    keep = np.ones(N_GOOD + 1, dtype=bool)
    keep[::4] = False  # index 0, 4, 8, ...
    plan = plan_of(shapes_dataset, keep=keep)
    seen = [int(i) for b in plan.dataset().iter_torch_batches(batch_size=None) for i in b["index"]]
    ids = sorted_ids(shapes_dataset)
    assert sorted(seen) == [i for i in range(N_GOOD + 1) if keep[i] and ids[i] != "broken.png"]
    with pytest.raises(ValueError, match="keep has shape"):
        plan_of(shapes_dataset, keep=keep[:-1])


def test_decoded_images_and_worker_augmentation(shapes_dataset):
    plan = plan_of(shapes_dataset, augmentation=None, decode_size=24)
    with pytest.raises(ValueError, match="augmentation="):
        epoch(plan)
    batches = epoch(plan, augmentation=AUG, device="cpu")
    assert len(batches) == N_GOOD // 8
    assert clusters_by_index(shapes_dataset, None) is None  # instances: the index is the cluster
    for x in batches:
        assert set(x) == STREAMED
        assert x["views"].shape == (8, 2, 3, 16, 16) and x["views"].dtype == torch.float32
        assert not torch.equal(x["views"][:, 0], x["views"][:, 1])
    block = next(iter(plan.dataset().iter_torch_batches(batch_size=None)))
    assert block[IMAGE_U8].shape[1:] == (3, 24, 24)  # decoded at decode_size, not the crop size


def test_unshuffled_dataset_keeps_file_order(shapes_dataset):
    ids = sorted_ids(shapes_dataset)
    file_ids = pq.read_table(shapes_dataset / "train-000000.parquet").column(C.ID).to_pylist()
    plan = plan_of(shapes_dataset)
    seen = [int(i) for b in plan.dataset().iter_torch_batches(batch_size=None) for i in b["index"]]
    assert seen == [ids.index(i) for i in file_ids]


def test_a_cluster_table_that_does_not_fit_is_an_error(shapes_dataset, tmp_path):
    ids = sorted_ids(shapes_dataset)
    short = write_clusters(tmp_path / "short.parquet", ids[:-3], [0] * (len(ids) - 3))
    with pytest.raises(ClusterTableError) as err:
        clusters_by_index(shapes_dataset, short)
    assert "3 ids of the dataset are missing from the table, e.g. " in str(err.value)
    assert any(repr(name) in str(err.value) for name in ids[-3:])  # one named as an example
    bad = write_clusters(tmp_path / "bad.parquet", ids, [0.5] * len(ids))
    with pytest.raises(ClusterTableError, match=r"non-integer cluster .* has 0\.5"):
        clusters_by_index(shapes_dataset, bad)
    with pytest.raises(FileNotFoundError, match="no cluster table"):
        clusters_by_index(shapes_dataset, str(tmp_path / "absent.parquet"))
    with pytest.raises(ValueError, match="decode_size is needed"):
        plan_of(shapes_dataset, augmentation=None)


def _loop(config: dict) -> None:
    import ray.train
    import torch.distributed as dist

    me, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    plan: StreamPlan = config["plan"]
    seen = []
    for batch in until_any_rank_ends(
        plan.iter_epoch(1, batch_size=4, rank=me, world=world), torch.device("cpu")
    ):
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
    plan = plan_of(shapes_dataset, drops=drops)
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"plan": plan, "drops": drops, "out": str(tmp_path / "seen.json")},
        scaling_config=ScalingConfig(
            num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}
        ),
        run_config=RunConfig(storage_path=str(tmp_path), name="stream_smoke"),
    )
    trainer.fit()
    metrics = json.loads((tmp_path / "seen.json").read_text())
    assert metrics["sizes"][0] == metrics["sizes"][1] >= 16  # equal steps, whole batches
    index = metrics["index"]
    assert len(set(index)) == len(index)  # no image on both workers
    assert metrics["dropped"] >= 1
    drops.close()
    with pytest.raises(ray.exceptions.RayActorError):
        drops.count()


def test_worker_cache_loads_the_whole_decoded_split_once(shapes_dataset):
    """data.cache 'worker': the split read whole in file order into memory holds every good
    image once, in index order, with the pixels the stream decoded; a worker's own read
    (pyarrow and threads, no Ray Data) gives the same rows and reports the bad image once."""
    from clinfo_ray.data.read.drop_counter import DropTally
    from clinfo_ray.data.read.worker_cache import InMemorySplit

    ds = plan_of(shapes_dataset, augmentation=None, decode_size=16).dataset()
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
    tally = DropTally()
    plan = plan_of(shapes_dataset, augmentation=None, decode_size=16, drops=tally)
    read = InMemorySplit.read(plan, threads=3)
    for key in ("images", "index", "label"):
        assert torch.equal(getattr(read, key), getattr(split, key)), key
    assert tally.count() == 1 and tally.recent()[0][0] == "broken.png"
    in_order = list(read.in_order(7))
    assert [len(b["index"]) for b in in_order][:-1] == [7] * (len(in_order) - 1)
    assert torch.equal(torch.cat([b[IMAGE_U8] for b in in_order]), read.images)
    batches = list(split.batches(epoch=1, seed=0, rank=0, world=1, batch_size=8, augmentation=AUG))
    assert len(batches) == N_GOOD // 8 and batches[0]["views"].shape == (8, 2, 3, 16, 16)
