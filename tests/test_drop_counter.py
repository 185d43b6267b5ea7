"""data/dropped_images: each undecodable image once when every worker reads the split whole
(data.cache: worker), every read when a stream reads each image once an epoch."""

from __future__ import annotations

from clinfo_ray.data.read.drop_counter import DropTally

BAD = [(f"img{i}", "cannot identify image file") for i in range(12)]


def test_a_split_read_by_two_workers_counts_each_image_once() -> None:
    tally = DropTally(distinct=True)
    for _worker in range(2):  # each reads the whole split, in two batches
        tally.add(BAD[:5])
        tally.add(BAD[5:])
    tally.add(BAD[:3] + BAD[:3])  # a restarted worker group; an id twice in one report
    assert tally.count() == 12
    assert [image_id for image_id, _ in tally.recent()] == [i for i, _ in BAD]


def test_a_stream_counts_every_epoch_read() -> None:
    tally = DropTally()
    for _epoch in range(3):
        tally.add(BAD[:7])  # rank 0's share
        tally.add(BAD[7:])  # rank 1's
    assert tally.count() == 36
    assert len(tally.recent()) == 36
