"""How many images the training stream failed to decode: one small Ray actor per run.

The stream's tasks report each image they drop (``DecodeViews``); the workers report the count
as the metric ``DROPPED_METRIC`` each epoch.
"""

from __future__ import annotations

from typing import Any

import ray

DROPPED_METRIC = "data/dropped_images"


class DropTally:
    """The count behind :class:`DropCounter` (no Ray): every dropped image, or with
    ``distinct`` each image once however often it is read and dropped again.

    ``distinct`` is for a split that each worker reads whole once (``data.cache: worker``):
    2 workers reading 12 undecodable images are 12 dropped images, not 24, and so are the
    reads of a worker group restarted after a failure. A stream that reads each image once an
    epoch counts every read (12 an epoch).
    """

    def __init__(self, distinct: bool = False) -> None:
        self.total = 0
        self.examples: list[tuple[str, str]] = []
        self._seen: set[str] | None = set() if distinct else None

    def add(self, examples: list[tuple[str, str]]) -> None:
        if self._seen is not None:
            new = []
            for image_id, reason in examples:
                if image_id not in self._seen:
                    self._seen.add(image_id)
                    new.append((image_id, reason))
            examples = new
        self.total += len(examples)
        self.examples = (self.examples + examples)[-100:]

    def count(self) -> int:
        return self.total

    def recent(self) -> list[tuple[str, str]]:
        return list(self.examples)


_DropCounterActor = ray.remote(num_cpus=0)(DropTally)


class DropCounter:
    """How many images failed to decode in the stream (all epochs, all tasks): a Ray actor.

    Picklable: pass it to Train workers in ``train_loop_config`` and report ``count()`` as
    ``DROPPED_METRIC``.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    @classmethod
    def create(cls, *, distinct: bool = False) -> DropCounter:
        """A new counter (``distinct``: each image once, see :class:`DropTally`)."""
        # on the driver's node: a worker node lost mid-run must not take the count with it
        # (the run resumes on other nodes; the driver's node going means the run is over)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        return cls(_DropCounterActor.options(scheduling_strategy=here).remote(distinct))

    def add(self, examples: list[tuple[str, str]]) -> None:
        # Waits for the actor: a fire-and-forget call may still be in flight when the task that
        # made it has finished and the epoch's count is read. Drops are rare; the wait is too.
        ray.get(self._handle.add.remote(examples))

    def count(self) -> int:
        return int(ray.get(self._handle.count.remote()))

    def recent(self) -> list[tuple[str, str]]:
        """The last (up to 100) dropped images as (id, reason)."""
        return list(ray.get(self._handle.recent.remote()))

    def close(self) -> None:
        """End the actor (its counts are gone after this)."""
        ray.kill(self._handle)
