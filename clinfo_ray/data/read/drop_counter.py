"""How many images the training stream failed to decode: one small Ray actor per run.

The stream's tasks report each image they drop (``DecodeViews``); the workers report the count
as the metric ``DROPPED_METRIC`` each epoch.
"""

from __future__ import annotations

from typing import Any

import ray

DROPPED_METRIC = "data/dropped_images"


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
        # on the driver's node: a worker node lost mid-run must not take the count with it
        # (the run resumes on other nodes; the driver's node going means the run is over)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        return cls(
            _DropCounterActor.options(scheduling_strategy=here).remote()  # type: ignore[attr-defined]
        )

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
