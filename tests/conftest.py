"""Shared fixtures: one Ray cluster for the whole session, started on loopback by the tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Token authentication otherwise depends on what ran on this machine before (~/.ray/auth_token).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A Ray cluster of this session's own (never one another process started).

    4 logical CPUs on the 2-core machine: 2 Train workers at 1 CPU each would otherwise leave
    none for Ray Data's read tasks and the run would hang.
    """
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
