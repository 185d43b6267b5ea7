"""The training stream: Parquet -> cluster ids -> decode -> V augmented views -> Train workers.

On the driver::

    drops = DropCounter.create()
    ds = build_view_stream(data_dir, split="train", clusters=table_or_path,
                           augmentation=ViewAugmentation(size=32, views=2), drops=drops)
    TorchTrainer(..., datasets={"train": ds}, train_loop_config={"drops": drops, ...})

On each worker, every epoch::

    for batch in iter_views(batch_size=128, device=device, augmentation=aug):
        batch["views"]    # (B, V, 3, S, S) float32 in [0, 1], on ``device``
        batch["cluster"]  # (B,) int64: the image's cluster (its index when no table is given)
        batch["label"]    # (B,) int64, -1 where the dataset has no label
        batch["index"]    # (B,) int64: the image's row in the split (ids sorted)
    drops.count()         # the metric "data/dropped_images": images that failed to decode

Each epoch re-executes the stream, so the order and every crop are new. Images are decoded once
per epoch in batches; the V views come from one batched augmentation call, in Ray Data's CPU
tasks (``augment_on="ray_data"``: uint8 views travel to the worker) or on the worker's device
(``augment_on="worker"``: the decoded image travels and ``iter_views`` augments it; the same code
runs on CPU tensors). An image that fails to decode is dropped before the split among workers (so
their batch counts stay equal) and counted.

The order of an epoch (``shuffle=``):

* ``"pieces"`` (default): the split is cut into pieces of ``piece_rows`` consecutive rows inside
  a Parquet row group; every epoch the pieces take a new uniformly random order
  (``randomize_block_order``), each decode task reads ``decode_batch_size // piece_rows``
  consecutive pieces of that order and permutes their rows uniformly, and tasks finish in any
  order. Every image appears exactly once per epoch and every piece is equally likely anywhere,
  but the rows of one piece always end up in the same decode block, i.e. rows that are
  neighbours in the Parquet stay within about one batch of each other (a batch of 256 holds
  about 256 / ``piece_rows`` runs from random places). ``iter_views(local_shuffle_buffer_size=)``
  mixes further across blocks on the consumer.
* ``"full"``: ``random_shuffle`` of the encoded rows (every row's position independent): an
  all-to-all through the object store with barriers before decoding, several times slower on a
  small machine (docs/benchmarks.md, "Data stream").
* ``"none"``: pieces in file order (row order within a block kept, block order not guaranteed).

With ``cache_decoded=True`` the decoded images are kept and ``random_shuffle``d every epoch (any
mode but ``"none"``): a full shuffle, cheap once decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch

from clinfo_ray.data import columns as C
from clinfo_ray.data.augment import ViewAugmentation
from clinfo_ray.data.decode import decode_batch
from clinfo_ray.data.manifest import split_files
from clinfo_ray.data.parquet_pieces import list_pieces, read_pieces

log = logging.getLogger(__name__)

VIEWS, IMAGE_U8, INDEX = "views", "image_u8", "index"
DROPPED_METRIC = "data/dropped_images"
AUGMENT_ON = ("ray_data", "worker")
MAX_SHUFFLE_BLOCKS = 512
SHUFFLES = ("pieces", "full", "none")
READ_COLUMNS = (C.ID, C.IMAGE, C.LABEL)


@ray.remote(num_cpus=0)
class _DropCounterActor:
    def __init__(self) -> None:
        self.total = 0
        self.examples: list[tuple[str, str]] = []

    def add(self, examples: list[tuple[str, str]]) -> None:
        self.total += len(examples)
        self.examples = (self.examples + examples)[-100:]

    def count(self) -> int:
        return self.total

    def recent(self) -> list[tuple[str, str]]:
        return list(self.examples)


class DropCounter:
    """How many images failed to decode in the stream (all epochs, all tasks): a Ray actor.

    Picklable: pass it to Train workers in ``train_loop_config`` and report ``count()`` as
    ``DROPPED_METRIC``.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    @classmethod
    def create(cls) -> DropCounter:
        return cls(_DropCounterActor.remote())  # type: ignore[attr-defined]

    def add(self, examples: list[tuple[str, str]]) -> None:
        self._handle.add.remote(examples)  # fire and forget: never slows the stream

    def count(self) -> int:
        return int(ray.get(self._handle.count.remote()))

    def recent(self) -> list[tuple[str, str]]:
        """The last (up to 100) dropped images as (id, reason)."""
        return list(ray.get(self._handle.recent.remote()))

    def close(self) -> None:
        """End the actor (its counts are gone after this)."""
        ray.kill(self._handle)


def read_cluster_table(clusters: pa.Table | str | Path) -> pa.Table:
    """An ``id -> cluster`` table from a Table or a Parquet file, checked and cast."""
    table = pq.read_table(clusters) if isinstance(clusters, (str, Path)) else clusters
    missing = {C.ID, C.CLUSTER} - set(table.column_names)
    if missing:
        raise ValueError(f"cluster table: missing column(s) {sorted(missing)}")
    table = table.select([C.ID, C.CLUSTER])
    if not pa.types.is_integer(table.schema.field(C.CLUSTER).type):
        raise ValueError(f"cluster table: cluster must be integer, got {table.schema[1].type}")
    return table.cast(C.CLUSTER_SCHEMA)


class ClusterLookup:
    """The ids of one split (sorted; an image's position is its ``index``) and their clusters."""

    def __init__(self, ids: pa.Array, clusters: pa.Array) -> None:
        self.ids, self.clusters = ids, clusters

    @classmethod
    def build(cls, files: list[str], clusters: pa.Table | str | Path | None) -> ClusterLookup:
        ids = pc.sort_indices(ids_col := pq.read_table(files, columns=[C.ID]).column(C.ID))
        ids = pc.take(ids_col, ids).combine_chunks()
        if clusters is None:  # instance discrimination: every image its own cluster
            return cls(ids, pa.array(np.arange(len(ids), dtype=np.int64)))
        table = read_cluster_table(clusters)
        pos = pc.index_in(ids, value_set=table.column(C.ID).combine_chunks())
        absent = pc.is_null(pos)
        if pc.any(absent).as_py():
            example = pc.filter(ids, absent)[0].as_py()
            n = pc.sum(absent.cast(pa.int64())).as_py()
            raise ValueError(f"cluster table: {n} image id(s) have no cluster, e.g. {example!r}")
        return cls(ids, pc.take(table.column(C.CLUSTER).combine_chunks(), pos))

    def lookup(self, batch_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(index, cluster) int64 arrays for ``batch_ids``."""
        pos = pc.index_in(batch_ids, value_set=self.ids)
        if pc.any(pc.is_null(pos)).as_py():
            raise ValueError("an image id of the stream is not in its split's id list")
        return pos.to_numpy().astype(np.int64), pc.take(self.clusters, pos).to_numpy()


class DecodeViews:
    """Ray Data transform: encoded images -> decoded uint8 images or V uint8 views per image.

    Rows that fail to decode are dropped and reported to ``drops``.
    """

    def __init__(
        self,
        *,
        lookup: ClusterLookup,
        decode_size: int,
        augmentation: ViewAugmentation | None,
        drops: DropCounter | None,
    ) -> None:
        self.lookup, self.decode_size = lookup, decode_size
        self.augmentation, self.drops = augmentation, drops

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        torch.set_num_threads(1)  # one task per core: no oversubscription
        ids = batch.column(C.ID).combine_chunks()
        images, ok, reasons = decode_batch(batch.column(C.IMAGE).to_pylist(), self.decode_size)
        if not ok.all():
            bad = [str(i) for i in pc.filter(ids, pa.array(~ok)).to_pylist()]
            log.warning(
                "dropped %d undecodable image(s), e.g. %s: %s", len(bad), bad[0], reasons[0]
            )
            if self.drops is not None:
                self.drops.add(list(zip(bad, reasons, strict=True)))
        keep = pa.array(ok)
        index, cluster = self.lookup.lookup(pc.filter(ids, keep))
        label = pc.filter(batch.column(C.LABEL).combine_chunks(), keep).fill_null(-1)
        out = {INDEX: index, C.CLUSTER: cluster, C.LABEL: label.to_numpy().astype(np.int64)}
        if self.augmentation is None:
            return {**out, IMAGE_U8: images}
        views = self.augmentation(torch.from_numpy(images), dtype=torch.uint8)
        return {**out, VIEWS: views.numpy()}  # (B, V, 3, S, S) uint8


class AugmentViews:
    """Ray Data transform: decoded uint8 images -> V uint8 views per image."""

    def __init__(self, augmentation: ViewAugmentation) -> None:
        self.augmentation = augmentation

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch.set_num_threads(1)
        pixels = np.ascontiguousarray(batch.pop(IMAGE_U8))
        if not pixels.flags.writeable:  # a zero-copy view of the object store: torch warns
            pixels = pixels.copy()
        views = self.augmentation(torch.from_numpy(pixels), dtype=torch.uint8)
        return {**batch, VIEWS: views.numpy()}


class PieceViews:
    """Ray Data transform: pieces of the Parquet split -> their rows (permuted) -> DecodeViews."""

    def __init__(self, decode: DecodeViews, *, permute: bool) -> None:
        self.decode, self.permute = decode, permute

    def __call__(self, pieces: pa.Table) -> dict[str, np.ndarray]:
        rng = np.random.default_rng() if self.permute else None  # OS entropy: new every call
        return self.decode(read_pieces(pieces, READ_COLUMNS, rng))


def shuffle_mode(shuffle: bool | str) -> str:
    """``True`` -> ``"pieces"``, ``False`` -> ``"none"``; a name from ``SHUFFLES`` as is."""
    mode = ("pieces" if shuffle else "none") if isinstance(shuffle, bool) else shuffle
    if mode not in SHUFFLES:
        raise ValueError(f"shuffle must be a bool or one of {SHUFFLES}, got {shuffle!r}")
    return str(mode)


def _piece_stream(
    files: list[str], decode: DecodeViews, *, randomize: bool, piece_rows: int, task_rows: int
) -> ray.data.Dataset:
    """Pieces (one Ray block each) -> optional new random block order -> read + decode tasks."""
    piece_rows = min(piece_rows, task_rows)
    pieces = list_pieces(files, piece_rows)
    # One block per piece (a few dozen bytes each) so that randomize_block_order, which only
    # permutes block references (no task, no data moved), reorders pieces and not fixed groups.
    ds: ray.data.Dataset = ray.data.from_arrow([pieces.slice(i, 1) for i in range(pieces.num_rows)])
    if randomize:
        ds = ds.randomize_block_order()
    transform = PieceViews(decode, permute=randomize)
    per_task = max(1, task_rows // piece_rows)
    return ds.map_batches(transform, batch_size=per_task, batch_format="pyarrow")


def build_view_stream(
    dataset_dir: str | Path,
    *,
    augmentation: ViewAugmentation,
    split: str = C.TRAIN,
    clusters: pa.Table | str | Path | None = None,
    decode_size: int | None = None,
    augment_on: str = "ray_data",
    shuffle: bool | str = True,
    drops: DropCounter | None = None,
    decode_batch_size: int = 256,
    cache_decoded: bool = False,
    piece_rows: int = 32,
) -> ray.data.Dataset:
    """The Ray Data stream of one split (see the module docstring for its batches and order).

    ``clusters``: an ``id -> cluster`` table (or Parquet path) covering every image of the split;
    ``None`` gives instance clusters. ``decode_size``: the side images are decoded to before the
    random crop (default: ``augmentation.size``, as the paper's 32-px runs: crops are upsampled).
    ``shuffle``: ``"pieces"`` (``True``), ``"full"`` or ``"none"`` (``False``).
    ``piece_rows``: rows per piece of the ``"pieces"`` order (capped at ``decode_batch_size``);
    smaller mixes more, at the price of reading more row groups per task.
    ``cache_decoded``: decode once, keep the uint8 images in Ray's object store (N·3·S² bytes)
    and only shuffle and augment each epoch; for sets that fit in memory (the emoji: 4.7 MB).
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
    mode = shuffle_mode(shuffle)
    files = split_files(dataset_dir, split)
    lookup = ClusterLookup.build(files, clusters)
    size = decode_size or augmentation.size
    on_cpu = augmentation if augment_on == "ray_data" else None
    pieces = {"piece_rows": piece_rows, "task_rows": decode_batch_size}
    if cache_decoded:
        decode = DecodeViews(lookup=lookup, decode_size=size, augmentation=None, drops=drops)
        ds = _piece_stream(files, decode, randomize=False, **pieces).materialize()
        if mode != "none":
            ds = ds.random_shuffle()
        if on_cpu is None:
            return ds
        views = AugmentViews(on_cpu)
        return ds.map_batches(views, batch_size=decode_batch_size, batch_format="numpy")
    transform = DecodeViews(lookup=lookup, decode_size=size, augmentation=on_cpu, drops=drops)
    if mode != "full":
        return _piece_stream(files, transform, randomize=mode == "pieces", **pieces)
    ds = ray.data.read_parquet(files).select_columns(list(READ_COLUMNS))
    # Enough output blocks for one decode task per batch: a split with one Parquet file would
    # otherwise be one block, decoded by one task on one core. batch_size=None: one task per
    # block; blocks are slightly under decode_batch_size rows, and a batch size would bundle
    # two of them into each task (3 tasks instead of 6 for the emoji: one core idle).
    blocks = min(MAX_SHUFFLE_BLOCKS, max(1, -(-len(lookup.ids) // decode_batch_size)))
    ds = ds.random_shuffle().repartition(blocks)
    return ds.map_batches(transform, batch_size=None, batch_format="pyarrow")


def iter_views(
    shard: Any = None,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    augmentation: ViewAugmentation | None = None,
    prefetch_batches: int = 2,
    local_shuffle_buffer_size: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of equal-sized batches on a Train worker (see the module docstring).

    ``shard`` defaults to ``ray.train.get_dataset_shard("train")``; a ``ray.data.Dataset`` works
    too. ``augmentation`` is needed when the stream was built with ``augment_on="worker"``.
    ``local_shuffle_buffer_size``: rows kept on the worker and drawn at random into batches
    (Ray Data's local shuffle): mixes rows of different blocks, at some latency and copying.
    """
    if shard is None:
        import ray.train  # only on Train workers: not imported with the stream

        shard = ray.train.get_dataset_shard("train")
    device = torch.device(device)
    batches = shard.iter_torch_batches(
        batch_size=batch_size,
        drop_last=True,
        prefetch_batches=prefetch_batches,
        local_shuffle_buffer_size=local_shuffle_buffer_size,
    )
    for batch in batches:
        out = {k: batch[k].to(device, non_blocking=True) for k in (C.CLUSTER, C.LABEL, INDEX)}
        if VIEWS in batch:
            out[VIEWS] = batch[VIEWS].to(device, non_blocking=True).float().div_(255.0)
        else:
            if augmentation is None:
                raise ValueError("the stream carries decoded images: pass augmentation=")
            images = batch[IMAGE_U8].to(device, non_blocking=True)
            out[VIEWS] = augmentation(images, dtype=torch.float32)
        yield out
