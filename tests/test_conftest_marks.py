"""conftest.py marks `ray` every test that reaches the ray_session fixture, so that
``pytest -m "not ray"`` never starts Ray; a test that starts Ray without it fails."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

INI = """
[pytest]
addopts = --strict-markers
markers =
    ray: needs the session-scoped Ray cluster
"""

SUITE = """
import pytest

@pytest.fixture
def cluster(ray_session):
    return "cluster"

@pytest.fixture
def dataset(cluster):
    return "dataset"

def test_direct(ray_session):
    pass

def test_through_two_fixtures(dataset):
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_parametrized(dataset, n):
    pass

class TestGrouped:
    def test_method(self, cluster):
        pass

def test_plain(tmp_path):
    pass

def test_plain_too():
    pass
"""

OVERRIDE = """
import pytest

@pytest.fixture
def shapes_dataset(shapes_dataset):  # the module's own, on the conftest's one
    return shapes_dataset

def test_override(shapes_dataset):
    pass

def test_unit():
    pass
"""


def collected(pytester: pytest.Pytester, *args: str) -> set[str]:
    result = pytester.runpytest("--collect-only", "-q", *args)
    return {line.split("::", 1)[1] for line in result.stdout.lines if "::" in line}


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=SUITE, test_override=OVERRIDE)
    return pytester


def test_not_ray_collects_only_tests_that_never_reach_ray_session(suite: pytest.Pytester) -> None:
    assert collected(suite, "-m", "not ray") == {"test_plain", "test_plain_too", "test_unit"}
    assert collected(suite, "-m", "ray") == {
        "test_direct",
        "test_through_two_fixtures",
        "test_parametrized[1]",
        "test_parametrized[2]",
        "TestGrouped::test_method",
        "test_override",
    }


def test_a_test_that_starts_ray_on_its_own_fails(suite: pytest.Pytester) -> None:
    """Without Ray itself: a stand-in `ray` module that says it is started. Installed at
    import, so it is what the check sees before and after the test; pytester puts the real
    modules back after the run."""
    suite.makepyfile(
        test_stray="""
import sys, types

state = {"on": False}
sys.modules["ray"] = types.SimpleNamespace(
    is_initialized=lambda: state["on"], shutdown=lambda: state.update(on=False)
)

def test_starts_ray():
    state["on"] = True  # as ray.init() would

def test_leaves_ray_alone():
    pass
"""
    )
    result = suite.runpytest("test_stray.py")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*started Ray without the ray_session fixture*"])


def test_this_session_marks_every_test_that_reaches_ray_session(
    request: pytest.FixtureRequest,
) -> None:
    """The real suite, as collected in this run: under ``-m "not ray"`` no test reaches Ray."""
    items = request.session.items
    reach = [i for i in items if "ray_session" in getattr(i, "fixturenames", ())]
    assert all(i.get_closest_marker("ray") is not None for i in reach)
    if request.config.getoption("markexpr") == "not ray":
        assert not reach, [i.nodeid for i in reach]
