"""The command layer: the README's commands parse, the jobs delegate to the commands, and a
bad input ends a command in one line on stderr before Ray starts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from clinfo_ray.commands.flags import flag_overrides
from clinfo_ray.commands.main import COMMANDS, build_parser
from clinfo_ray.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[list[str]]:
    """Every ``clinfo-ray ...`` line of the README's code blocks, as argv."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("clinfo-ray ")]


def test_every_readme_command_parses_and_its_config_loads() -> None:
    commands = _readme_commands()
    assert {argv[0] for argv in commands} >= {"prepare", "clusters", "train", "eval"}
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # exits (SystemExit) on an unknown flag
        if args.command in ("train", "clusters") and getattr(args, "config", None):
            load_config(args.config, flag_overrides(args))  # raises on a bad key or value


@pytest.mark.parametrize("job", ["prepare", "clusters", "train", "eval", "tune"])
def test_jobs_delegate_to_the_commands(job: str) -> None:
    """``python jobs/X.py`` from a checkout is ``clinfo-ray X``: the same options."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.startswith(f"usage: clinfo-ray {job}")
    assert COMMANDS[job] in result.stdout


def _fails_in_one_line(argv: list[str], *expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clinfo_ray", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, and no Ray start-up logs before it
    assert lines[0].startswith(f"clinfo-ray {argv[0]}: error: ")
    for text in expected:
        assert text in lines[0], lines[0]


def test_a_bad_config_fails_in_one_line_before_ray(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [0.1\n")
    _fails_in_one_line(["train", "--config", str(bad)], f"{bad}:3:", "not valid YAML")
    _fails_in_one_line(
        ["train", "--config", "quickstart", "--set", "clusters.kmeans.niter=0"],
        "clusters.kmeans.niter",
    )
    _fails_in_one_line(["prepare", "imagefolder", "--images", str(tmp_path)], "prepare.annotations")
    _fails_in_one_line(["clusters", "--data", str(tmp_path), "--k", "x", "--out", "t.parquet"])
    _fails_in_one_line(["eval", "--checkpoint", str(tmp_path)], "state.json")
