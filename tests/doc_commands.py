"""The commands of the project's documents, read as a user reads them and checked as the
commands check them: the fenced command blocks of README.md and docs/multinode.md, each
``clinfo-ray ...``, ``python jobs/X.py ...`` or ``python -m clinfo_ray ...`` command (also as
the entrypoint of ``ray job submit ... --``), parsed by the real parser and loaded as the command
loads its config. Shared by tests/test_readme_commands.py, tests/test_readme_claims.py and
tests/test_jobs_submit.py (which runs the README's jobs as written).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinfo_ray.commands.common import is_shared_location
from clinfo_ray.commands.flags import flag_overrides
from clinfo_ray.commands.main import _module, build_parser
from clinfo_ray.config import TrainConfig, apply_overrides, load_config, parse_set_overrides
from clinfo_ray.study.study_file import load_study
from clinfo_ray.tuning.space import load_space

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = (README, ROOT / "docs" / "multinode.md")
IMAGE_CHECKOUT = "/home/ray/clinfo-ray/"  # deploy/Dockerfile's WORKDIR: its jobs/ are ours
SHELLS = ("bash", "sh", "")  # fenced blocks of these languages hold commands


@dataclass(frozen=True)
class DocCommand:
    """One command of a document's fenced blocks."""

    where: str  # "README.md:42"
    text: str  # the line as written (continuations joined)
    argv: list[str]  # the clinfo-ray argv: [subcommand, *args]
    submit: list[str] | None  # `ray job submit`'s own options when it is a job's entrypoint


def fenced_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, body) of every fenced block of a shell language, indented or not."""
    found = []
    pattern = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
    for match in pattern.finditer(text):
        if match.group(2) in SHELLS:
            indent = len(match.group(1))
            body = "\n".join(line[indent:] for line in match.group(3).splitlines())
            found.append((text.count("\n", 0, match.start(3)) + 1, body))
    return found


def logical_lines(body: str, first: int) -> list[tuple[int, str]]:
    """(line number, line) with backslash continuations joined."""
    lines: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, line in enumerate(body.splitlines()):
        start, text = pending if pending else (first + offset, "")
        text += line.rstrip()
        if text.endswith("\\"):
            pending = (start, text[:-1] + " ")
            continue
        pending = None
        lines.append((start, text))
    return lines


def clinfo_argv(words: list[str]) -> list[str] | None:
    """The clinfo-ray argv of a command's words, or None when it is another program."""
    if words[:1] == ["clinfo-ray"]:
        return words[1:]
    if words[:3] == ["python", "-m", "clinfo_ray"]:
        return words[3:]
    if words[:1] == ["python"] and len(words) > 1:
        script = words[1].removeprefix(IMAGE_CHECKOUT)
        match = re.fullmatch(r"jobs/(\w+)\.py", script)
        if match:
            assert (ROOT / script).is_file(), f"{script}: no such job"
            return [match.group(1), *words[2:]]
    return None


def command_of(line: str, where: str) -> DocCommand | None:
    """The clinfo-ray command of one shell line (None: another program, whose scripts must
    exist)."""
    words = shlex.split(re.sub(r"\$\([^)]*\)", "SUBSTITUTED", line), comments=True)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        words = words[1:]  # VAR=value before the program
    submit = None
    if words[:3] == ["ray", "job", "submit"] and "--" in words:
        cut = words.index("--")
        submit, words = words[3:cut], words[cut + 1 :]
    argv = clinfo_argv(words)
    if argv is not None:
        return DocCommand(where, line.strip(), argv, submit)
    if words[:1] == ["python"] or words[:1] == [".venv/bin/python"]:
        scripts = [w for w in words[1:] if w.endswith(".py")]
        assert all((ROOT / s).is_file() for s in scripts), f"{where}: {line}"
    return None


def doc_commands(path: Path) -> list[DocCommand]:
    found = []
    for first, body in fenced_blocks(path.read_text()):
        for number, line in logical_lines(body, first):
            command = command_of(line, f"{path.name}:{number}")
            if command is not None:
                found.append(command)
    return found


def all_commands() -> list[DocCommand]:
    return [c for doc in DOCS for c in doc_commands(doc)]


def parse(argv: list[str]) -> Any:
    """The real parser's namespace; a ValueError with argparse's own message when it refuses."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return build_parser().parse_args(argv)
    except SystemExit:
        raise ValueError(errors.getvalue().strip().splitlines()[-1]) from None


def check_config(args: Any) -> None:
    """Load what the command loads (every --set key and value checked); raises on a bad one."""
    name = args.command
    if name in ("train", "tune"):
        cfg = load_config(args.config, flag_overrides(args))
        if name == "tune":
            load_space(args.space, cfg, parse_set_overrides(flag_overrides(args)))
    elif name in ("prepare", "clusters"):
        _module(name).config_from_args(args)
    elif name == "study":
        load_study(args.config, parse_set_overrides(args.set), quick=args.quick)
    elif name == "demo":
        study = load_study(args.study, parse_set_overrides(args.overrides))
        known = {m.name for m in study.methods}
        assert set(args.methods.split(",")) <= known, args.methods
    elif name in ("eval", "embed"):
        apply_overrides(TrainConfig(), parse_set_overrides(flag_overrides(args)))


def problems(command: DocCommand) -> list[str]:
    """What is wrong with a documented command (nothing: an empty list)."""
    try:
        args = parse(command.argv)
        check_config(args)
    except (ValueError, AssertionError) as err:
        return [f"{command.where}: {command.text}\n    {err}"]
    if command.submit is None:
        return []
    relative = {
        name: value
        for name, value in _module(args.command).locations(args).items()
        for value in (value if isinstance(value, list | tuple) else [value])
        if value is not None and not is_shared_location(str(value))
    }
    return [f"{command.where}: a job given relative locations {relative}"] if relative else []


def readme_job(script: str) -> DocCommand:
    """The README's one ``ray job submit --working-dir .`` example of ``jobs/SCRIPT.py``."""
    found = [c for c in doc_commands(README) if c.submit == ["--working-dir", "."]]
    found = [c for c in found if c.argv[0] == script]
    assert len(found) == 1, found
    return found[0]
