"""``data.cache: worker``: each Train worker holds the whole decoded split and cuts its batches.

For sets that fit on each worker (the emoji set is 5 MB at 32 px; a million 32-px images are
3 GB), this removes all Ray Data work: the worker reads and decodes the split itself once, when
it starts (``StreamPlan.read_whole``: pyarrow and a few threads), and every epoch after that is
a permutation and an index. Reading it through a Ray Data dataset (:meth:`InMemorySplit.load`)
gives the same rows.

The order of an epoch is one global permutation of the split drawn from ``(seed, epoch)``, the
same on every rank; global step ``i`` takes its slice ``[i*G, (i+1)*G)`` and rank ``r`` the
``r``-th ``B`` rows of that slice (``G = B * world``). So the global batch is exactly the one a
single process would draw, every image appears at most once per epoch (the ``N mod G`` left
over are a different random set each epoch), and a resumed run repeats the epoch it resumes.
The views are augmented on the worker's device from a seed of ``(seed, epoch, rank, step)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from clinfo_ray.data import columns as C
from clinfo_ray.data.read.augment import ViewAugmentation
from clinfo_ray.data.read.stream import IMAGE_U8, INDEX, StreamPlan
from clinfo_ray.data.seeding import mixed_seed

LOAD_BATCH = 1024


@dataclass(frozen=True)
class InMemorySplit:
    """One decoded split, rows sorted by ``index`` (the image's row in its split)."""

    images: torch.Tensor  # (N, 3, S, S) uint8, on the worker's device
    index: torch.Tensor  # (N,) int64
    label: torch.Tensor  # (N,) int64, -1 where unlabelled

    @classmethod
    def from_batches(
        cls, batches: Iterable[dict[str, Any]], device: torch.device | str = "cpu"
    ) -> InMemorySplit:
        """Collect the batches of an unaugmented stream (``augment_on="worker"``)."""
        parts: dict[str, list[torch.Tensor]] = {IMAGE_U8: [], INDEX: [], C.LABEL: []}
        for batch in batches:
            if IMAGE_U8 not in batch:
                raise ValueError(
                    "the stream carries augmented views; data.cache 'worker' needs decoded "
                    "images (build the stream with augment_on='worker')"
                )
            for key, chunks in parts.items():
                chunks.append(torch.as_tensor(batch[key]))
        if not parts[INDEX]:
            raise ValueError("the split is empty: no image could be loaded into worker memory")
        index = torch.cat(parts[INDEX]).long()
        order = torch.argsort(index)
        if bool((index[order][1:] == index[order][:-1]).any()):
            raise ValueError("the stream gave an image twice; was it split among workers?")
        device = torch.device(device)
        return cls(
            images=torch.cat(parts[IMAGE_U8])[order].contiguous().to(device),
            index=index[order].to(device),
            label=torch.cat(parts[C.LABEL]).long()[order].to(device),
        )

    @classmethod
    def load(cls, dataset: Any, device: torch.device | str = "cpu") -> InMemorySplit:
        """Read a whole (unsplit) Ray Data dataset or Train dataset shard once."""
        return cls.from_batches(
            dataset.iter_torch_batches(batch_size=LOAD_BATCH, drop_last=False), device
        )

    @classmethod
    def read(
        cls, plan: StreamPlan, device: torch.device | str = "cpu", threads: int | None = None
    ) -> InMemorySplit:
        """Read the plan's split whole in this process (no Ray Data; see the module doc)."""
        return cls.from_batches([plan.read_whole(threads)], device)

    def in_order(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """The rows by ``index``, ``batch_size`` at a time (the last batch may be smaller), as
        an unaugmented stream gives them: ``image_u8``, ``index``, ``label``."""
        for start in range(0, len(self), batch_size):
            rows = slice(start, start + batch_size)
            yield {IMAGE_U8: self.images[rows], INDEX: self.index[rows], C.LABEL: self.label[rows]}

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def steps_per_epoch(self, global_batch: int) -> int:
        return len(self) // global_batch

    def epoch_order(self, seed: int, epoch: int) -> torch.Tensor:
        """The epoch's permutation of row positions (drawn on the CPU: equal on every rank)."""
        generator = torch.Generator().manual_seed(mixed_seed(seed, epoch))
        return torch.randperm(len(self), generator=generator)

    def batches(
        self,
        *,
        epoch: int,
        seed: int,
        rank: int,
        world: int,
        batch_size: int,
        augmentation: ViewAugmentation,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's batches of one epoch, as ``iter_views`` gives them (views float32)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        order = self.epoch_order(seed, epoch)
        step_rows = batch_size * world
        for step in range(self.steps_per_epoch(step_rows)):
            start = step * step_rows + rank * batch_size
            rows = order[start : start + batch_size].to(self.images.device)
            views = augmentation(
                self.images[rows],
                dtype=torch.float32,
                seed=mixed_seed(seed, epoch, rank, step),
            )
            yield {
                "views": views,
                INDEX: self.index[rows],
                C.LABEL: self.label[rows],
            }
