"""The package's import graph, read from the source with ``ast`` (nothing is imported): no
cycles, imports only down the layers below or inside one unit, and argparse only in commands/.

Every import counts: module level, inside functions, under ``if TYPE_CHECKING:``; relative
imports are resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = "clinfo_ray"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# unit -> rank. A module belongs to the unit with the longest matching dotted prefix. An import
# may go to a unit of lower rank or stay inside its own unit; two units of one rank are
# independent. data.read and data.write sit between data's top modules (columns, manifest,
# splits, seeding) and rank 2: both may import the top modules, neither the other. devices
# sits above config: it reads config's `Device` choice.
UNITS: dict[str, float] = {
    # the package root: __init__.py holds the version and re-exports the public API
    # (load_encoder) on first use, from above every unit (nothing inside imports the root)
    PACKAGE: 8,
    # where data are read and written (local paths, s3:// and other URIs): under everything
    f"{PACKAGE}.storage": -1,
    f"{PACKAGE}.config": 0,
    f"{PACKAGE}.devices": 0.5,
    f"{PACKAGE}.data": 1,
    f"{PACKAGE}.data.write": 1.5,
    f"{PACKAGE}.data.read": 1.5,
    f"{PACKAGE}.distributed": 2,
    f"{PACKAGE}.model": 2,
    f"{PACKAGE}.clusters": 2,
    f"{PACKAGE}.losses": 3,
    f"{PACKAGE}.optim": 3,
    f"{PACKAGE}.checkpointing": 4,
    f"{PACKAGE}.evaluation": 5,
    f"{PACKAGE}.export": 4.5,  # below evaluation, whose embedding path reads exports
    f"{PACKAGE}.training": 6,
    f"{PACKAGE}.tuning": 6.5,
    f"{PACKAGE}.study": 6.8,
    f"{PACKAGE}.commands": 7,
}
# Modules placed by name rather than by prefix: the root package alone is the root unit (its
# other modules need a unit of their own); `python -m clinfo_ray` is one of the commands.
PLACED = {PACKAGE: PACKAGE, f"{PACKAGE}.__main__": f"{PACKAGE}.commands"}
COMMANDS = f"{PACKAGE}.commands"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a name imported from a module counts as that module)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve_relative(module: str, level: int, name: str | None, *, package: bool) -> str:
    """``from ..x import y`` in ``module`` (a package's ``__init__`` if ``package``) -> the
    absolute name of ``..x``."""
    parts = module.split(".") if package else module.split(".")[:-1]
    if level > len(parts):
        raise ValueError(f"{module}: relative import beyond the top-level package")
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, name] if name else base)


def known_module(name: str) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (None: outside it)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules():
            return candidate
        parts.pop()
    return None


def imports_in(source: str, module: str, *, package: bool = False) -> Iterator[tuple[str, int]]:
    """(absolute imported name, line) of every import statement in ``source``, the text of
    ``module``. ``from pkg import sub`` names the submodule ``pkg.sub`` where there is one."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = resolve_relative(module, node.level, node.module, package=package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in modules() else base), node.lineno


def imports_of(module: str) -> Iterator[tuple[str, int]]:
    path = modules()[module]
    return imports_in(path.read_text(), module, package=path.name == "__init__.py")


@cache
def package_imports() -> tuple[Import, ...]:
    """Every import from one module of the package to another (self-imports left out)."""
    found = []
    for module in modules():
        for name, line in imports_of(module):
            target = known_module(name)
            if target is not None and target != module:
                found.append(Import(module, target, line))
    return tuple(found)


def unit_of(module: str) -> str | None:
    if module in PLACED:
        return PLACED[module]
    prefixes = [u for u in UNITS if u != PACKAGE and (module == u or module.startswith(u + "."))]
    return max(prefixes, key=len) if prefixes else None


def allowed(source: str, target: str) -> bool:
    """Whether module ``source`` may import module ``target`` (both placed in a unit)."""
    s, t = unit_of(source), unit_of(target)
    assert s is not None and t is not None
    return s == t or UNITS[t] < UNITS[s]


def arrow(source: str, target: str) -> str:
    s, t = unit_of(source), unit_of(target)
    assert s is not None and t is not None
    return f"{source} -> {target} (rank {UNITS[s]:g} -> rank {UNITS[t]:g})"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


SAMPLE = """
from __future__ import annotations
import json, clinfo_ray.data.columns as C
from typing import TYPE_CHECKING
from . import decode
from .. import manifest
from ..splits import val_mask
if TYPE_CHECKING:
    from clinfo_ray.model import ContrastiveModel

def run():
    import argparse
    from clinfo_ray.config import sections, TrainConfig
"""


def test_the_reader_finds_every_kind_of_import() -> None:
    found = dict(imports_in(SAMPLE, f"{PACKAGE}.data.read.stream"))
    assert found == {
        "__future__": 2,
        "json": 3,
        f"{PACKAGE}.data.columns": 3,
        "typing": 4,
        f"{PACKAGE}.data.read.decode": 5,  # a relative import of a submodule
        f"{PACKAGE}.data.manifest": 6,
        f"{PACKAGE}.data.splits": 7,  # val_mask is a name in it
        f"{PACKAGE}.model": 9,  # under TYPE_CHECKING
        "argparse": 12,  # inside a function
        f"{PACKAGE}.config.sections": 13,
        f"{PACKAGE}.config": 13,  # TrainConfig: a name of the package itself
    }
    in_init = dict(imports_in("from .columns import ID", f"{PACKAGE}.data", package=True))
    assert in_init == {f"{PACKAGE}.data.columns": 1}
    assert known_module(f"{PACKAGE}.data.columns.SCHEMA") == f"{PACKAGE}.data.columns"
    assert known_module("numpy.linalg") is None
    assert len(modules()) > 30 and len(package_imports()) > 50


def test_every_module_belongs_to_a_unit() -> None:
    unplaced = sorted(m for m in modules() if unit_of(m) is None)
    assert not unplaced, (
        f"modules outside every unit of UNITS in {Path(__file__).name} (place each in a unit "
        f"and rank): {', '.join(unplaced)}"
    )


def test_no_import_cycles() -> None:
    edges: dict[str, set[str]] = {m: set() for m in modules()}
    for imp in package_imports():
        edges[imp.source].add(imp.target)
    found = cycles(edges)
    lines = []
    for component in found:
        inside = set(component)
        lines += [f"cycle among {', '.join(component)}:"]
        lines += [
            f"  {i.source} -> {i.target} (line {i.line})"
            for i in package_imports()
            if i.source in inside and i.target in inside
        ]
    assert not found, "\n".join(lines)


def test_imports_go_down_the_layers() -> None:
    lines: dict[tuple[str, str], list[int]] = {}
    for imp in package_imports():
        if unit_of(imp.source) is None or unit_of(imp.target) is None:
            continue  # test_every_module_belongs_to_a_unit names it
        if not allowed(imp.source, imp.target):
            lines.setdefault((imp.source, imp.target), []).append(imp.line)
    report = [
        f"{arrow(source, target)}, line {', '.join(map(str, sorted(at)))}"
        for (source, target), at in sorted(lines.items())
    ]
    assert not report, "imports against the layering:\n" + "\n".join(report)


def test_the_layer_rule_on_made_up_arrows() -> None:
    """Down is fine, up and sideways (another unit of the same rank) are not."""
    assert allowed(f"{PACKAGE}.training.worker", f"{PACKAGE}.data.read.stream")
    assert allowed(f"{PACKAGE}.data.read.stream", f"{PACKAGE}.data.columns")
    assert allowed(f"{PACKAGE}.data.write.sources.emoji", f"{PACKAGE}.data.write.prepare")
    assert allowed(f"{PACKAGE}.__main__", f"{PACKAGE}.commands.main")
    assert allowed(f"{PACKAGE}.evaluation.knn", f"{PACKAGE}.clusters.kmeans")
    assert not allowed(f"{PACKAGE}.data.read.stream", f"{PACKAGE}.data.write.prepare")
    assert not allowed(f"{PACKAGE}.data.write.prepare", f"{PACKAGE}.data.read.decode")
    assert not allowed(f"{PACKAGE}.data.manifest", f"{PACKAGE}.data.read.stream")
    assert not allowed(f"{PACKAGE}.clusters.build", f"{PACKAGE}.model.encoders")
    assert not allowed(f"{PACKAGE}.clusters.build", f"{PACKAGE}.evaluation.features")
    assert not allowed(f"{PACKAGE}.config.sections", f"{PACKAGE}.devices")
    assert arrow(f"{PACKAGE}.clusters.build", f"{PACKAGE}.evaluation.features") == (
        f"{PACKAGE}.clusters.build -> {PACKAGE}.evaluation.features (rank 2 -> rank 5)"
    )


def test_only_commands_parse_the_command_line() -> None:
    offenders = [
        f"{module} (line {line})"
        for module in modules()
        if unit_of(module) != COMMANDS
        for name, line in imports_of(module)
        if name == "argparse" or name.startswith("argparse.")
    ]
    assert not offenders, "argparse imported outside commands/: " + ", ".join(offenders)


def imported_test_modules(source: str) -> Iterator[tuple[str, int]]:
    """(test module, line) of every ``tests.test_*`` module that ``source`` imports."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found = {".".join(n.split(".")[:2]) for n in names if n.startswith("tests.test_")}
        for name in sorted(found):
            yield name, node.lineno


def test_test_modules_import_no_other_test_module() -> None:
    """Shared test code lives in helpers (tests/datasets.py, tests/loss_reference.py), never in a
    test module: importing one runs its module-level code and mixes in its names."""
    assert list(imported_test_modules("from tests import test_a, datasets")) == [
        ("tests.test_a", 1)
    ]
    assert list(imported_test_modules("import tests.test_b.x\nfrom tests.datasets import d")) == [
        ("tests.test_b", 1)
    ]
    offenders = [
        f"{path.name} imports {name} (line {line})"
        for path in sorted(Path(__file__).resolve().parent.glob("test_*.py"))
        for name, line in imported_test_modules(path.read_text())
    ]
    assert not offenders, "test modules importing test modules:\n" + "\n".join(offenders)


def test_every_library_module_stays_under_the_400_line_limit() -> None:
    """STYLE.md's soft limit, kept: a file past it holds more than one concern."""
    package = Path(__file__).resolve().parent.parent / "clinfo_ray"
    long = {
        str(p.relative_to(package)): n
        for p in package.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, f"split by concern: {long}"


def test_no_module_imports_a_command() -> None:
    """What the README says: a command's module (one per subcommand) is imported by no module of
    the package; the commands share common.py and flags.py, and main.py finds them by name."""
    from clinfo_ray.commands.main import COMMANDS as SUBCOMMANDS

    commands = {f"{COMMANDS}.{name}" for name in SUBCOMMANDS}
    found = [
        f"{i.source} -> {i.target} (line {i.line})"
        for i in package_imports()
        if i.target in commands
    ]
    assert not found, found


def test_a_run_s_driver_loads_no_torchvision() -> None:
    """Starting a run (the command, a Tune trial, the modules the driver imports to hand the
    workers their loop) loads no torchvision: only a worker that builds a ResNet or crops views
    does (its import took 1.3-1.5 s here, measured under load)."""
    import subprocess
    import sys

    modules = [
        "clinfo_ray.commands.train",
        "clinfo_ray.commands.tune",
        "clinfo_ray.commands.study",
        "clinfo_ray.training.launch",
        "clinfo_ray.training.worker",
        "clinfo_ray.tuning.trainable",
        "ray.train.torch",
    ]
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout[:300]
