"""Where a worker's images come from: its training batches, and the whole train split that the
online kNN and k-means embed.

With ``data.cache: worker`` a worker reads both itself, once, with pyarrow and a few threads
(``StreamPlan.read_whole``): no Ray Data pipeline starts, on the driver or on the workers. Else
the training batches are streamed by Ray Data every epoch (the driver's plan) and the whole
split is the Train dataset ``EMBED_TRAIN`` (materialised in the object store by the driver with
``data.cache: object_store``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import ray.train
import torch

from clinfo_ray.config import TrainConfig
from clinfo_ray.data.read.augment import ViewAugmentation
from clinfo_ray.data.read.stream import StreamPlan
from clinfo_ray.data.read.worker_cache import InMemorySplit
from clinfo_ray.distributed import rank, until_any_rank_ends, world_size
from clinfo_ray.training.objective import augmentation_of

log = logging.getLogger(__name__)

EMBED_TRAIN = "embed_train"  # the whole train split, unaugmented: kNN bank + queries, k-means


@dataclass(frozen=True)
class BatchSource:
    """Where this rank's training batches come from: the split in worker memory (data.cache
    'worker'), or the driver's stream plan (read by Ray Data each epoch)."""

    memory: InMemorySplit | None
    stream: StreamPlan | None
    augmentation: ViewAugmentation | None  # the views made here (data.augment_on 'worker')

    @classmethod
    def open(cls, cfg: TrainConfig, stream: StreamPlan | None, device: torch.device) -> BatchSource:
        if stream is None:
            raise ValueError("the driver must send the training rows' StreamPlan")
        augmentation = augmentation_of(cfg) if cfg.data.augment_on == "worker" else None
        memory = _read_memory(stream, device) if cfg.data.cache == "worker" else None
        return cls(memory, stream, augmentation)

    def epoch(
        self, cfg: TrainConfig, epoch: int, device: torch.device
    ) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's batches of ``epoch``: views (B, V, 3, S, S) float32, and (B,) index and
        label, on ``device``. Every rank stops when the first runs out (streamed shares differ
        by a few rows)."""
        batch_size = cfg.data.batch_size_per_worker
        if self.memory is None:
            assert self.stream is not None
            batches = self.stream.iter_epoch(
                epoch,
                batch_size=batch_size,
                rank=rank(),
                world=world_size(),
                device=device,
                augmentation=self.augmentation,
            )
            return until_any_rank_ends(batches, device)
        assert self.augmentation is not None, "data.cache 'worker' implies augment_on 'worker'"
        return self.memory.batches(
            epoch=epoch,
            seed=cfg.run.seed,
            rank=rank(),
            world=world_size(),
            batch_size=batch_size,
            augmentation=self.augmentation,
        )


def _read_memory(plan: StreamPlan, device: torch.device) -> InMemorySplit:
    """The training rows, read whole by this worker."""
    start = time.perf_counter()
    memory = InMemorySplit.read(plan, device)
    if rank() == 0:
        log.info(
            "each worker holds the train split: %d images, %.1f MiB on %s, read in %.1f s",
            len(memory),
            memory.nbytes / 2**20,
            device,
            time.perf_counter() - start,
        )
    return memory


class WholeTrainSplit:
    """The whole train split, unaugmented (the kNN bank and its queries, what k-means
    clusters): from ``plan``, read by this worker at its first use and kept in host memory
    (data.cache 'worker'; the embedding moves each batch to the device, so a GPU holds only the
    training split), or else from the Train dataset ``EMBED_TRAIN`` each time."""

    def __init__(self, plan: StreamPlan | None) -> None:
        self._plan = plan
        self._memory: InMemorySplit | None = None

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        if self._plan is None:
            shard = ray.train.get_dataset_shard(EMBED_TRAIN)
            return iter(shard.iter_torch_batches(batch_size=batch_size, drop_last=False))
        if self._memory is None:
            self._memory = InMemorySplit.read(self._plan, "cpu")
        return self._memory.in_order(batch_size)
