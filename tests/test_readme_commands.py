"""A README whose commands cannot rot: each is checked against the real parser and config.

Every command of the fenced command blocks of README.md and docs/multinode.md (``clinfo-ray
...``, ``python jobs/X.py ...``, ``python -m clinfo_ray ...``, also as the entrypoint of a ``ray
job submit ... --``) is parsed by the real parser (``clinfo_ray.commands.main``): its
subcommand and flags exist, and its config loads as the command loads it, so every ``--set
key=value`` names a real key with a value the config accepts. A command inside ``ray job
submit`` gives only locations every node sees (what a submitted job refuses otherwise); so
does each job's own example. tests/test_jobs_submit.py runs the README's train and tune jobs as
written. (Its numbers and tables: tests/test_readme_claims.py.)
"""

from __future__ import annotations

import ast
import shlex

import pytest

from clinfo_ray.commands.flags import flag_overrides
from clinfo_ray.commands.main import COMMANDS, _module
from clinfo_ray.config import load_config
from tests.doc_commands import (
    README,
    ROOT,
    DocCommand,
    all_commands,
    command_of,
    doc_commands,
    fenced_blocks,
    logical_lines,
    parse,
    problems,
    readme_job,
)


def test_the_checker_finds_what_rots() -> None:
    """The checker itself: a flag, a key, a value or a job location that is wrong is found."""
    bad = [
        ["train", "--config", "quickstart", "--epochs", "3"],  # no such flag
        ["train", "--config", "quickstart", "--set", "optim.nope=1"],  # no such key
        ["train", "--config", "quickstart", "--set", "optim.epochs=zero"],  # a bad value
        ["prepare", "--config", "quickstart"],  # prepare takes no training config
        ["tune", "--space", "nope", "--config", "quickstart"],
        ["study", "--config", "study_cpu", "--set", "model.width=3"],
    ]
    for argv in bad:
        assert problems(DocCommand("x", " ".join(argv), argv, None)), argv
    job = ["train", "--config", "quickstart"]
    assert problems(DocCommand("x", "job", job, ["--working-dir", "."]))
    shared = [*job, "--set", "data.dataset_dir=/mnt/d", "--set", "run.output_dir=/mnt/r"]
    assert not problems(DocCommand("x", "job", shared, ["--working-dir", "."]))
    text = (
        "```bash\nray job submit --working-dir . -- python jobs/train.py \\\n  --config q  # c\n```"
    )
    (first, body), *_ = fenced_blocks(text)
    [(number, line)] = logical_lines(body, first)
    assert number == 2 and shlex.split(line, comments=True)[-2:] == ["--config", "q"]


def test_every_documented_command_parses_and_its_config_loads() -> None:
    commands = all_commands()
    found = [p for c in commands for p in problems(c)]
    assert not found, "\n".join(found)
    readme = {c.argv[0] for c in commands if c.where.startswith(README.name)}
    assert readme == set(COMMANDS), (
        f"commands the README shows no example of: {set(COMMANDS) - readme}"
    )
    jobs = {c.argv[0] for c in commands if c.submit is not None}
    assert {"prepare", "train", "tune"} <= jobs, jobs


@pytest.mark.parametrize("job", sorted(p.stem for p in (ROOT / "jobs").glob("*.py")))
def test_each_jobs_own_example_is_a_valid_job(job: str) -> None:
    """The ``ray job submit`` example in each job's docstring parses, loads and gives only
    locations a job accepts."""
    doc = ast.get_docstring(ast.parse((ROOT / "jobs" / f"{job}.py").read_text())) or ""
    lines = [line for _, line in logical_lines(doc, 1) if line.strip().startswith("ray job")]
    commands = [command_of(line, f"jobs/{job}.py") for line in lines]
    assert commands and all(c is not None and c.submit is not None for c in commands), lines
    found = [p for c in commands if c is not None for p in problems(c)]
    assert not found, "\n".join(found)


def test_the_prepare_step_comes_before_the_quickstart() -> None:
    """A newcomer following the README in order has data/emoji before the first command that
    trains or tunes the quickstart on it."""
    commands = [c for c in doc_commands(README) if c.submit is None]
    uses = [
        i
        for i, c in enumerate(commands)
        if c.argv[0] in ("train", "tune")
        and load_config(parse(c.argv).config, flag_overrides(parse(c.argv))).data.dataset_dir
        == "data/emoji"
    ]
    prepared = [
        i
        for i, c in enumerate(commands)
        if c.argv[0] == "prepare"
        and _module("prepare").config_from_args(parse(c.argv)).out == "data/emoji"
    ]
    assert uses and prepared and prepared[0] < uses[0], (prepared, uses)


def test_the_readme_job_examples_are_the_ones_the_jobs_test_runs() -> None:
    """tests/test_jobs_submit.py runs these two as written (its shared folder for /mnt/shared)."""
    for script in ("train", "tune"):
        command = readme_job(script)
        assert command.submit == ["--working-dir", "."], command.submit
        assert any("/mnt/shared/" in word for word in command.argv), command.text
