"""The streamed training input: Parquet -> decode -> V augmented views -> one Train worker.

For splits too large to hold on every worker (``data.cache``: ``none`` or ``object_store``). The
driver builds a :class:`StreamPlan` once (the split's pieces, its sorted ids, which rows
train, and with ``cache=True`` every piece decoded into Ray's object store); the plan goes to
the Train workers in ``train_loop_config`` and each worker makes its own Ray Data dataset of
every epoch::

    plan = StreamPlan.build(data_dir, augmentation=aug, seed=0, drops=drops)
    # on rank r of w, each epoch:
    for batch in plan.iter_epoch(epoch, rank=r, world=w, batch_size=128, device=device):
        batch["views"]    # (B, V, 3, S, S) float32 in [0, 1], on ``device``
        batch["label"]    # (B,) int64, -1 where the dataset has no label
        batch["index"]    # (B,) int64: the image's row in the split (ids sorted)
    drops.count()         # the metric "data/dropped_images": images that failed to decode

The stream knows no clusters: a worker maps ``index`` to its cluster itself
(``clinfo_ray.clusters.assignment.clusters_by_index``), so re-clustering needs no new stream.

Every random draw comes from the plan's seed (``run.seed``) and the epoch, rank or piece: the
same seed gives the same batches on every rank, whatever order Ray runs the tasks in.

* **Pieces**: the split is cut into pieces of ``piece_rows`` consecutive rows inside a Parquet
  row group (listed from the footers; no data read). Each epoch the pieces take one permutation
  drawn from (seed, epoch), the same on every rank, and rank r takes every w-th piece of it:
  disjoint shares, new ones every epoch.
* **Tasks**: a Ray Data task reads ``task_rows // piece_rows`` consecutive pieces of its rank's
  order (or gets them decoded from the object store), permutes their rows, decodes and, with
  ``augment_on="ray_data"``, makes the views; its seeds come from the epoch and its first
  piece's number. The dataset preserves the task order, so the worker sees the same rows in
  the same order in every run.
* **Worker**: batches are drawn at random from a buffer of ``SHUFFLE_BUFFER_BATCHES`` batches
  (Ray Data's local shuffle, seeded by seed, epoch and rank), so the rows of several tasks mix
  within a batch; with ``augment_on="worker"`` the views are made there, seeded per batch.

``prepare`` writes a dataset's rows in one seeded global permutation, so neighbouring Parquet
rows are unrelated and a piece is a random sample of the split; the piece order and the buffer
mix the rows of data written in any other order as far as pieces of ``piece_rows`` allow
(measured in docs/benchmarks.md).

Ranks' shares differ by a few pieces at most (and by images that fail to decode: dropped in the
task and counted): the worker loop ends an epoch when the first rank runs out of batches
(``distributed.until_any_rank_ends``), so every rank takes the same number of steps. Rows held
out (the validation split, ``keep``) are filtered before decoding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import sorted_ids, split_files
from clinfo_ray.data.read.augment import ViewAugmentation
from clinfo_ray.data.read.decode import decode_batch
from clinfo_ray.data.read.drop_counter import DropCounter
from clinfo_ray.data.read.parquet_pieces import PIECE, list_pieces, read_pieces
from clinfo_ray.data.seeding import (
    BATCH_BUFFER,
    PIECE_ORDER,
    ROW_ORDER,
    VIEWS_IN_TASK,
    VIEWS_ON_WORKER,
    mixed_seed,
)

log = logging.getLogger(__name__)

VIEWS, IMAGE_U8, INDEX = "views", "image_u8", "index"
TASK_ROWS = 256  # rows per Ray Data task
SHUFFLE_BUFFER_BATCHES = 4  # the worker's local shuffle buffer, in batches


class DecodeViews:
    """Rows of the split -> the kept rows' index, label and uint8 image.

    ``ids``: the split's ids, sorted (``manifest.sorted_ids``): a row's ``index`` is the
    position of its id there. ``keep``: (n,) bool by ``index``, the rows that stay (None: all);
    the others are filtered before decoding. Rows that fail to decode are dropped and reported
    to ``drops``. ``label``: the input's column ``label_column`` (data.label_column). The output
    carries the rows' piece numbers when the input has them.
    """

    def __init__(
        self,
        *,
        ids: pa.Array,
        decode_size: int,
        drops: DropCounter | None,
        keep: np.ndarray | None = None,
        label_column: str = C.LABEL,
    ) -> None:
        if keep is not None and keep.shape != (len(ids),):
            raise ValueError(f"keep has shape {keep.shape}; the split has {len(ids)} rows")
        self.ids, self.decode_size, self.keep, self.drops = ids, decode_size, keep, drops
        self.label_column = label_column

    @property
    def columns(self) -> tuple[str, ...]:
        """The Parquet columns it reads."""
        return (C.ID, C.IMAGE, self.label_column)

    def index_of(self, batch_ids: pa.Array) -> np.ndarray:
        """(n,) int64 ``index`` of each id of ``batch_ids``."""
        pos = pc.index_in(batch_ids, value_set=self.ids)
        if pos.null_count:
            example = pc.filter(batch_ids, pc.is_null(pos))[0].as_py()
            raise ValueError(f"image id {example!r} of the stream is not in its split's id list")
        return pos.to_numpy().astype(np.int64)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """In a Ray Data task: :meth:`rows` on one thread (one task per core)."""
        torch.set_num_threads(1)  # no oversubscription
        return self.rows(batch)

    def rows(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """The kept rows of ``batch`` decoded (the undecodable ones dropped and reported)."""
        index = self.index_of(batch.column(C.ID).combine_chunks())
        if self.keep is not None:
            kept = self.keep[index]
            batch, index = batch.filter(pa.array(kept)), index[kept]
        images, ok, reasons = decode_batch(batch.column(C.IMAGE).to_pylist(), self.decode_size)
        if not ok.all():
            ids = batch.column(C.ID).combine_chunks()
            bad = [str(i) for i in pc.filter(ids, pa.array(~ok)).to_pylist()]
            log.warning(
                "dropped %d undecodable image(s), e.g. %s: %s", len(bad), bad[0], reasons[0]
            )
            if self.drops is not None:
                self.drops.add(list(zip(bad, reasons, strict=True)))
        label = batch.column(self.label_column).combine_chunks().fill_null(-1)
        label = label.to_numpy(zero_copy_only=False)
        out = {INDEX: index[ok], C.LABEL: label.astype(np.int64)[ok]}
        if PIECE in batch.column_names:
            out[PIECE] = batch.column(PIECE).to_numpy()[ok]
        return {**out, IMAGE_U8: images}


class _EpochTransform:
    """One task of an epoch: its decoded rows in a random order, as images or V uint8 views.

    ``seed`` None keeps file order and the images (reading a whole split). Else both draws come
    from ``seed`` (the run's seed and the epoch) and the task's first piece number, after the
    undecodable rows are gone: the streamed and the cached paths give the same batches.
    """

    def __init__(self, augmentation: ViewAugmentation | None, seed: int | None) -> None:
        self.augmentation, self.seed = augmentation, seed

    def finish(self, rows: dict[str, np.ndarray], first_piece: int) -> dict[str, np.ndarray]:
        if self.seed is None:
            return rows
        rng = np.random.default_rng(mixed_seed(self.seed, ROW_ORDER, first_piece))
        order = rng.permutation(len(rows[INDEX]))
        rows = {k: v[order] for k, v in rows.items()}
        if self.augmentation is None:
            return rows
        images = torch.from_numpy(np.ascontiguousarray(rows.pop(IMAGE_U8)))
        seed = mixed_seed(self.seed, VIEWS_IN_TASK, first_piece)
        views = self.augmentation(images, dtype=torch.uint8, seed=seed)
        return {**rows, VIEWS: views.numpy()}  # (B, V, 3, S, S) uint8


class PieceViews(_EpochTransform):
    """Ray Data transform: one task's pieces -> their rows read and decoded -> finished."""

    def __init__(
        self, decode: DecodeViews, augmentation: ViewAugmentation | None, seed: int | None
    ) -> None:
        super().__init__(augmentation, seed)
        self.decode = decode

    def __call__(self, pieces: pa.Table) -> dict[str, np.ndarray]:
        rows = self.decode(read_pieces(pieces, self.decode.columns))
        return self.finish(rows, int(pieces.column(PIECE)[0].as_py()))


class CachedViews(_EpochTransform):
    """Ray Data transform: one task's pieces -> their decoded rows from the object store ->
    finished."""

    def __init__(
        self, refs: list[Any], augmentation: ViewAugmentation | None, seed: int | None
    ) -> None:
        super().__init__(augmentation, seed)
        self.refs = refs

    def __call__(self, pieces: pa.Table) -> dict[str, np.ndarray]:
        torch.set_num_threads(1)
        numbers = pieces.column(PIECE).to_pylist()
        parts: list[dict[str, np.ndarray]] = ray.get([self.refs[p] for p in numbers])
        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self.finish(rows, int(numbers[0]))


@ray.remote
def _decode_pieces(pieces: pa.Table, decode: DecodeViews) -> list[dict[str, np.ndarray]]:
    """Decode a few pieces once (file order); one result per piece, for the object store."""
    rows = decode(read_pieces(pieces, decode.columns))
    piece_of_row = rows[PIECE]
    out = [{k: v[piece_of_row == p] for k, v in rows.items()} for p in pieces[PIECE].to_pylist()]
    return out if len(out) > 1 else out[0]  # type: ignore[return-value]  # num_returns=1


@dataclass(frozen=True)
class StreamPlan:
    """Everything a worker needs to stream its share of a split, epoch after epoch (picklable).

    ``pieces``: every piece of the split (``parquet_pieces.PIECE_SCHEMA`` plus its number in
    the ``PIECE`` column); a Ray Data task takes ``pieces_per_task`` of them.
    ``decode``: the per-row transform. ``augmentation``: the views made in the tasks, None when
    they are made on the worker. ``cached``: one object-store reference per piece (its decoded
    rows), or None.
    """

    pieces: pa.Table
    decode: DecodeViews
    augmentation: ViewAugmentation | None
    seed: int
    pieces_per_task: int
    cached: tuple[Any, ...] | None = None

    @classmethod
    def build(
        cls,
        dataset_dir: str | Path,
        *,
        augmentation: ViewAugmentation | None,
        decode_size: int | None = None,
        split: str = C.TRAIN,
        keep: np.ndarray | None = None,
        seed: int = 0,
        drops: DropCounter | None = None,
        cache: bool = False,
        piece_rows: int = C.PIECE_ROWS,
        task_rows: int = TASK_ROWS,
        label_column: str = C.LABEL,
    ) -> StreamPlan:
        """The plan of one split. ``augmentation``: the views, made in Ray Data's tasks; None
        hands out decoded images (``augment_on="worker"``, reading a split for evaluation).
        ``decode_size``: the side images are decoded to before the random crop (default:
        ``augmentation.size``). ``keep``: (n,) bool by index, the rows streamed (None: all).
        ``cache``: decode every piece once now (Ray tasks) and keep the uint8 rows in the
        object store (N·3·decode_size² bytes). ``label_column``: the column the batches'
        ``label`` comes from (data.label_column)."""
        size = decode_size or (augmentation.size if augmentation is not None else None)
        if size is None:
            raise ValueError("decode_size is needed when there is no augmentation")
        files = split_files(dataset_dir, split)
        piece_rows = min(piece_rows, task_rows)
        pieces = list_pieces(files, piece_rows)
        pieces = pieces.append_column(PIECE, pa.array(np.arange(pieces.num_rows), pa.int64()))
        decode = DecodeViews(
            ids=sorted_ids(files),
            decode_size=size,
            drops=drops,
            keep=keep,
            label_column=label_column,
        )
        plan = cls(pieces, decode, augmentation, seed, task_rows // piece_rows)
        if not cache:
            return plan
        decode_ref = ray.put(decode)
        refs: list[Any] = []
        for group in plan._task_groups(np.arange(pieces.num_rows)):
            n = group.num_rows
            out: Any = _decode_pieces.options(num_returns=n).remote(group, decode_ref)
            refs += out if n > 1 else [out]
        return cls(pieces, decode, augmentation, seed, plan.pieces_per_task, tuple(refs))

    def _task_groups(self, order: np.ndarray) -> list[pa.Table]:
        """The pieces in ``order``, cut into one table per Ray Data task."""
        chosen = self.pieces.take(pa.array(order, type=pa.int64()))
        step = self.pieces_per_task
        return [chosen.slice(i, step) for i in range(0, chosen.num_rows, step)]

    def read_whole(self, threads: int | None = None) -> dict[str, np.ndarray]:
        """The whole split (its kept rows) read and decoded in this process, in file order:
        the rows :meth:`dataset` gives with ``epoch`` None, without a Ray Data pipeline (pyarrow
        reads, ``threads`` decode; default: this machine's cores, at most 8). For a split that
        one process holds (data.cache 'worker'); a dropped image is reported as in a task."""
        groups = self._task_groups(np.arange(self.pieces.num_rows))
        if not groups:
            raise ValueError("the split has no rows to read")
        workers = threads or min(8, os.cpu_count() or 1)

        def one(group: pa.Table) -> dict[str, np.ndarray]:
            return self.decode.rows(read_pieces(group, self.decode.columns))

        with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL
            parts = list(pool.map(one, groups))
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def piece_order(self, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """This rank's pieces of one epoch: every ``world``-th of one permutation of all."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        rng = np.random.default_rng(mixed_seed(self.seed, PIECE_ORDER, epoch))
        return rng.permutation(self.pieces.num_rows)[rank::world]

    def dataset(self, epoch: int | None = None, rank: int = 0, world: int = 1) -> ray.data.Dataset:
        """One epoch of this rank's share; ``epoch`` None: the whole split in file order."""
        if epoch is None:
            order, seed = np.arange(self.pieces.num_rows), None
        else:
            order, seed = self.piece_order(epoch, rank, world), mixed_seed(self.seed, epoch)
        if order.size == 0:
            raise ValueError(f"rank {rank} of {world} gets none of {self.pieces.num_rows} pieces")
        augmentation = self.augmentation if seed is not None else None
        transform: PieceViews | CachedViews
        if self.cached is None:
            transform = PieceViews(self.decode, augmentation, seed)
        else:
            transform = CachedViews(list(self.cached), augmentation, seed)
        ds = ray.data.from_arrow(self._task_groups(order))
        ds.context.execution_options.preserve_order = True  # the same rows in the same order
        return ds.map_batches(transform, batch_size=None, batch_format="pyarrow")

    def iter_epoch(
        self,
        epoch: int,
        *,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
        augmentation: ViewAugmentation | None = None,
        prefetch_batches: int = 2,
        shuffle_buffer_batches: int = SHUFFLE_BUFFER_BATCHES,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's batches of one epoch (``augmentation`` when the plan makes no views)."""
        yield from iter_views(
            self.dataset(epoch, rank, world),
            batch_size=batch_size,
            device=device,
            augmentation=augmentation,
            prefetch_batches=prefetch_batches,
            local_shuffle_buffer_size=batch_size * shuffle_buffer_batches or None,
            seed=mixed_seed(self.seed, BATCH_BUFFER, epoch, rank),
        )


def iter_views(
    dataset: Any,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    augmentation: ViewAugmentation | None = None,
    prefetch_batches: int = 2,
    local_shuffle_buffer_size: int | None = None,
    seed: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Equal-sized batches of a view stream (a ``ray.data.Dataset`` or a Train dataset shard).

    ``augmentation`` makes the views of a stream that carries decoded images. ``seed`` seeds
    the local shuffle buffer and those views (batch ``i`` from ``(seed, i)``); None draws them
    from OS entropy.
    """
    device = torch.device(device)
    batches = dataset.iter_torch_batches(
        batch_size=batch_size,
        drop_last=True,
        prefetch_batches=prefetch_batches,
        local_shuffle_buffer_size=local_shuffle_buffer_size,
        local_shuffle_seed=seed if local_shuffle_buffer_size else None,
    )
    for i, batch in enumerate(batches):
        out = {k: batch[k].to(device, non_blocking=True) for k in (C.LABEL, INDEX)}
        if VIEWS in batch:
            out[VIEWS] = batch[VIEWS].to(device, non_blocking=True).float().div_(255.0)
        else:
            if augmentation is None:
                raise ValueError("the stream carries decoded images: pass augmentation=")
            images = batch[IMAGE_U8].to(device, non_blocking=True)
            views_seed = None if seed is None else mixed_seed(seed, VIEWS_ON_WORKER, i)
            out[VIEWS] = augmentation(images, dtype=torch.float32, seed=views_seed)
        yield out
