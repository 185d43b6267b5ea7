"""Every benchmark script still imports: a name it takes from the library that moved or went
away fails here, not when someone reruns a page's command."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted(
    p.stem
    for p in (Path(__file__).parent.parent / "benchmarks").glob("*.py")
    if p.stem != "__init__"
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_the_benchmark_imports(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"
