"""The command layer: the jobs delegate to the commands, a bad input ends a command in one
line on stderr before Ray starts, a submitted job refuses relative locations, and the help
names what is shipped today. (The README's commands: tests/test_readme_commands.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clinfo_ray.commands.main import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


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


def _fails_in_one_line(
    argv: list[str], *expected: str, env: dict[str, str] | None = None, program: str = ""
) -> None:
    """``python -m clinfo_ray ARGV`` (or ``python PROGRAM ARGV[1:]``, a job) exits 2 with one
    line on stderr holding every ``expected`` text: nothing of Ray started before it."""
    command = (
        [sys.executable, program, *argv[1:]]
        if program
        else [sys.executable, "-m", "clinfo_ray", *argv]
    )
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
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


def test_a_missing_source_or_checkpoint_fails_in_one_line_before_ray(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    annotations = tmp_path / "a.csv"
    annotations.write_text("path,tags,label\n")
    source = ["--images", str(missing), "--annotations", str(annotations)]
    _fails_in_one_line(
        ["prepare", "imagefolder", *source, "--out", str(tmp_path / "out")],
        f"{missing}: image folder not found",
    )
    _fails_in_one_line(
        ["eval", "--checkpoint", str(missing)], f"no such checkpoint directory: {missing}"
    )
    _fails_in_one_line(  # the dataset a run needs: the message names the command that makes it
        ["train", "--config", "quickstart", "--set", f"data.dataset_dir={missing}"],
        f"{missing}: no manifest.json",
        f"clinfo-ray prepare SOURCE --out {missing}",
        "`clinfo-ray prepare emoji --out data/emoji`",
    )


def test_prepare_takes_only_a_prepare_file(tmp_path: Path) -> None:
    """prepare's --config is a file with a 'prepare:' section: the training configs its help
    no longer offers are refused in one line saying so."""
    _fails_in_one_line(["prepare", "--config", "quickstart"], "no such file", "'prepare:'")
    own = tmp_path / "prepare.yaml"
    own.write_text("prepare:\n  source: imagefolder\n  images: /no/such/folder\n")
    _fails_in_one_line(
        ["prepare", "--config", str(own), "--annotations", str(tmp_path / "a.csv")],
        "/no/such/folder: image folder not found",
    )
    help_text = _help("prepare")
    assert "quickstart" not in help_text and "'prepare:'" in help_text


def _study_without_its_files(tmp_path: Path) -> Path:
    """study_fmnist_cpu, its Fashion-MNIST files looked for in a folder that does not exist."""
    from clinfo_ray.study.spec import STUDIES_DIR

    raw = yaml.safe_load((STUDIES_DIR / "study_fmnist_cpu.yaml").read_text())
    raw["prepare"]["images"] = str(tmp_path / "no-fashion-mnist")
    raw["set"]["data.dataset_dir"] = str(tmp_path / "fmnist6k")
    raw["set"]["run.output_dir"] = str(tmp_path / "runs")
    raw["study"]["setting_search"] = None
    path = tmp_path / "study_fmnist_cpu.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_study_or_the_demo_without_its_data_source_fails_before_ray(tmp_path: Path) -> None:
    study = _study_without_its_files(tmp_path)
    _fails_in_one_line(
        ["study", "--config", str(study)],
        "train-images-idx3-ubyte[.gz] not found",
        "apt-get install dataset-fashion-mnist",
    )
    (tmp_path / "bin").mkdir()  # a PATH without npm, an empty npm cache: `make demo` on a bare box
    no_npm = {"PATH": str(tmp_path / "bin"), "CLINFO_RAY_CACHE": str(tmp_path / "cache")}
    _fails_in_one_line(
        ["demo", "--out", str(tmp_path / "demo"), "--set", f"data.dataset_dir={tmp_path / 'e4'}"],
        "npm is not installed",
        "apt-get install npm",
        env=no_npm,
    )


RAY_JOB = {  # what Ray's job supervisor hands a submitted job's entrypoint (job_supervisor.py)
    "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(
        {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_test"}}
    )
}


def test_a_submitted_job_refuses_relative_locations_before_ray(tmp_path: Path) -> None:
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    from clinfo_ray.commands.common import JOB_CONFIG_VAR

    assert JOB_CONFIG_VAR == RAY_JOB_CONFIG_JSON_ENV_VAR  # the variable Ray sets, by its name
    job = str(ROOT / "jobs" / "train.py")
    _fails_in_one_line(  # the quickstart's data/emoji and runs would name Ray's temporary copy
        ["train", "--config", "quickstart"],
        "data.dataset_dir: 'data/emoji' is relative",
        "raysubmit_test",
        "absolute path every node mounts",
        "s3://",
        env=RAY_JOB,
        program=job,
    )
    data, runs = tmp_path / "emoji", ["--set", f"run.output_dir={tmp_path / 'runs'}"]
    _fails_in_one_line(  # the dataset absolute, the runs not
        ["train", "--config", "quickstart", "--set", f"data.dataset_dir={data}"],
        "run.output_dir: 'runs' is relative",
        env=RAY_JOB,
        program=job,
    )
    _fails_in_one_line(  # both absolute: past the check, on to the next one (no dataset there)
        ["train", "--config", "quickstart", "--set", f"data.dataset_dir={data}", *runs],
        f"{data}: no manifest.json",
        env=RAY_JOB,
        program=job,
    )
    _fails_in_one_line(
        ["eval", "--checkpoint", "runs/x/checkpoint"], "--checkpoint: 'runs/x", env=RAY_JOB
    )
    _fails_in_one_line(
        ["prepare", "emoji", "--out", "data/emoji"], "prepare.out: 'data/emoji'", env=RAY_JOB
    )
    # outside a job, a relative location is the user's own folder: no such refusal
    _fails_in_one_line(
        ["eval", "--checkpoint", "runs/x/checkpoint"], "no such checkpoint directory"
    )


@pytest.mark.parametrize("job", sorted(p.stem for p in (ROOT / "jobs").glob("*.py")))
def test_every_job_says_which_locations_it_takes(job: str) -> None:
    """What clinfo_ray.commands.main checks inside a submitted job: every command with a job
    names its locations."""
    from clinfo_ray.commands.main import _module

    assert callable(getattr(_module(job), "locations", None)), job


def _help(command: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "clinfo_ray", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "400"},
    ).stdout


def test_the_help_names_what_is_shipped_today() -> None:
    from clinfo_ray.config import bundled_configs
    from clinfo_ray.data.write.sources.npm_cache import CACHE_ENV
    from clinfo_ray.study.spec import STUDIES_DIR
    from clinfo_ray.tuning.space import SPACES_DIR

    study = _help("study")
    assert all(p.stem in study for p in STUDIES_DIR.glob("*.yaml")), study
    tune = _help("tune")
    assert all(p.stem in tune for p in SPACES_DIR.glob("*.yaml"))
    assert all(name in tune and name in _help("train") for name in bundled_configs())
    # --cache's default folder, as npm_cache.default_cache() makes it
    shown = next(
        line for line in _help("prepare").splitlines() if line.strip().startswith("--cache")
    )
    assert f"${CACHE_ENV} or ~/.cache/clinfo-ray)" in shown, shown
    env = {k: v for k, v in os.environ.items() if k != CACHE_ENV}
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            "from clinfo_ray.data.write.sources.npm_cache import default_cache as d; print(d())",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    assert made == str(Path.home() / ".cache" / "clinfo-ray")
