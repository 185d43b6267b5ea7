"""data.cache 'worker': the split held in worker memory, and each epoch's batches cut from one
global permutation (no Ray: the batches of several ranks are computed side by side)."""

from __future__ import annotations

import itertools

import pytest
import torch

from clinfo_ray.data.read.augment import ViewAugmentation
from clinfo_ray.data.read.stream import IMAGE_U8
from clinfo_ray.data.read.worker_cache import InMemorySplit
from clinfo_ray.data.seeding import mixed_seed

AUG = ViewAugmentation(size=8, views=2)
N = 50


def _batches_in_stream_order(n: int = N, size: int = 8) -> list[dict[str, torch.Tensor]]:
    """A split of ``n`` images as an unsorted stream would give it: shuffled, uneven batches.
    Image ``i`` is filled with the value ``i``, so rows can be checked after any reordering."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    images = order.view(-1, 1, 1, 1).expand(n, 3, size, size).to(torch.uint8)
    cuts = [0, 7, 20, 21, n]
    return [
        {
            IMAGE_U8: images[a:b],
            "index": order[a:b],
            "label": torch.where(order[a:b] % 5 == 0, -1, order[a:b] % 3),
        }
        for a, b in itertools.pairwise(cuts)
    ]


def _split() -> InMemorySplit:
    return InMemorySplit.from_batches(_batches_in_stream_order())


def test_rows_are_sorted_by_index_and_stay_together() -> None:
    split = _split()
    assert len(split) == N and split.nbytes == N * 3 * 8 * 8
    assert split.index.tolist() == list(range(N))
    assert torch.equal(split.images[:, 0, 0, 0].long(), split.index)
    assert torch.equal(split.label, torch.where(split.index % 5 == 0, -1, split.index % 3))
    assert split.label[0] == -1 and split.label[1] == 1


def test_bad_streams_are_refused_with_the_reason() -> None:
    batches = _batches_in_stream_order()
    with pytest.raises(ValueError, match="twice"):
        InMemorySplit.from_batches([*batches, batches[0]])
    views = [{"views": torch.zeros(2, 2, 3, 8, 8), "index": torch.arange(2)}]
    with pytest.raises(ValueError, match="augment_on='worker'"):
        InMemorySplit.from_batches(views)
    with pytest.raises(ValueError, match="empty"):
        InMemorySplit.from_batches([])


def _epoch(split: InMemorySplit, epoch: int, world: int, batch: int, seed: int = 0) -> list:
    """[rank][step] batches of one epoch."""
    return [
        list(
            split.batches(
                epoch=epoch, seed=seed, rank=r, world=world, batch_size=batch, augmentation=AUG
            )
        )
        for r in range(world)
    ]


def test_ranks_share_one_global_permutation_and_never_overlap() -> None:
    split = _split()
    world, batch = 3, 4
    ranks = _epoch(split, epoch=1, world=world, batch=batch)
    steps = N // (world * batch)
    assert [len(r) for r in ranks] == [steps] * world
    order = split.epoch_order(0, 1)
    for step in range(steps):
        together = torch.cat([ranks[r][step]["index"] for r in range(world)])
        assert together.tolist() == order[step * 12 : (step + 1) * 12].tolist()
    seen = torch.cat([b["index"] for r in ranks for b in r])
    assert len(set(seen.tolist())) == steps * world * batch  # no image twice in an epoch
    # the global batches are those of one process with the global batch size
    single = _epoch(split, epoch=1, world=1, batch=world * batch)[0]
    for step in range(steps):
        together = torch.cat([ranks[r][step]["index"] for r in range(world)])
        assert torch.equal(single[step]["index"], together)


def test_batches_carry_the_rows_and_their_views() -> None:
    split = _split()
    for b in _epoch(split, epoch=2, world=2, batch=5)[1]:
        assert b["views"].shape == (5, 2, 3, 8, 8) and b["views"].dtype == torch.float32
        # every pixel of image i is i / 255 before colour jitter; a crop keeps it constant, so
        # the grey level identifies the image up to the jitter: check the label instead; the
        # batch carries no cluster (the worker maps index -> cluster through its clusters)
        assert set(b) == {"views", "index", "label"}
        assert torch.equal(b["label"], split.label[b["index"]])
        assert 0.0 <= float(b["views"].min()) and float(b["views"].max()) <= 1.0


def test_order_and_views_are_reproducible_and_new_each_epoch() -> None:
    split = _split()
    first = _epoch(split, epoch=3, world=2, batch=4)
    again = _epoch(split, epoch=3, world=2, batch=4)
    later = _epoch(split, epoch=4, world=2, batch=4)
    other_seed = _epoch(split, epoch=3, world=2, batch=4, seed=7)
    for a, b in zip(first[0], again[0], strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["views"], b["views"])

    def indices(e: list) -> list[int]:
        return torch.cat([b["index"] for b in e[0]]).tolist()

    assert indices(first) != indices(later)
    assert indices(first) != indices(other_seed)
    # the two ranks draw different crops: their seeds differ
    assert mixed_seed(0, 3, 0, 0) != mixed_seed(0, 3, 1, 0)


def test_a_rank_outside_the_world_is_an_error() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        next(_split().batches(epoch=1, seed=0, rank=2, world=2, batch_size=4, augmentation=AUG))
