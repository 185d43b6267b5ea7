"""Shared fixtures: one Ray cluster for the whole session, started on loopback by the tests, and
the one shapes dataset prepared on it.

Every test that needs Ray reaches ``ray_session``, directly or through other fixtures, and is
marked ``ray`` here at collection: ``pytest -m "not ray"`` runs the unit tests only, without
starting Ray. A test without the mark that starts Ray anyway (``ray.init``, or Ray Data starting
one on first use) fails at teardown.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import s3_server

# Ray's token authentication on, as for the clusters the commands start (RAY_AUTH_MODE set
# explicitly: left unset, Ray's choice depends on whether ~/.ray/auth_token exists). The clusters
# of the session get a token of their own, in the environment that every process they start
# inherits (RAY_AUTH_TOKEN wins over RAY_AUTH_TOKEN_PATH and ~/.ray/auth_token): nothing is
# written to disk, ~/.ray is neither read nor written, and the token ends with the session. A
# mode or token set by the caller is kept.
os.environ.setdefault("RAY_AUTH_MODE", "token")
if os.environ["RAY_AUTH_MODE"] == "token" and not (
    os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
):
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# The session's S3-compatible server (tests/s3_server.py): its endpoint on loopback, dummy
# credentials and no instance metadata, in the environment before any Ray cluster starts, so
# that every Ray worker reaches the same server. The server starts when a test asks for it.
S3_ENDPOINT = s3_server.configure_environment()

pytest_plugins = ("pytester",)  # tests/test_conftest_marks.py runs small suites of its own


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``ray`` every test whose fixture closure includes ``ray_session``."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # not imported: certainly not running
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def _ray_only_in_ray_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test not marked ``ray`` that leaves a Ray it started itself (shut down here)."""
    running_before = _ray_running()
    yield
    if running_before or request.node.get_closest_marker("ray") is not None:
        return
    if _ray_running():
        import ray

        ray.shutdown()
        pytest.fail(
            f"{request.node.nodeid} started Ray without the ray_session fixture: request "
            "ray_session (or a fixture built on it), so that it is marked `ray`"
        )


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


@pytest.fixture(scope="session")
def shapes_dataset(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's shapes dataset (tests/datasets.py: 48 train + 12 test drawn shapes),
    prepared once for every module that needs a small real dataset. Read it, never write into
    it: copy it first (``datasets.train_split_with_undecodable_row`` does)."""
    from tests.datasets import prepare_shapes_dataset

    return prepare_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def s3_bucket() -> Iterator[str]:
    """The session's S3 server (moto, on 127.0.0.1) and its bucket: ``s3://clinfo-test``."""
    server = s3_server.start_server(S3_ENDPOINT)
    try:
        yield f"s3://{s3_server.BUCKET}"
    finally:
        server.stop()


@pytest.fixture
def authentication_on(s3_bucket: str) -> Iterator[None]:
    """moto checks every request's key (the dummy one is unknown: all are denied)."""
    s3_server.set_authentication(S3_ENDPOINT, on=True)
    try:
        yield
    finally:
        s3_server.set_authentication(S3_ENDPOINT, on=False)


@pytest.fixture
def s3_prefix(s3_bucket: str, request: pytest.FixtureRequest) -> str:
    """A folder of the session's bucket of this test's own (nothing written there yet)."""
    return f"{s3_bucket}/{request.node.name.replace('[', '-').strip(']')}-{secrets.token_hex(4)}"
