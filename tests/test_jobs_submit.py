"""The jobs of ``jobs/`` through ``ray job submit``, end to end, against a Ray head of this
module's own: started with ``ray start --head --block`` (its own temp dir, free ports, the
dashboard and its job API on 127.0.0.1, token authentication on, with a token of its own in a
file named by RAY_AUTH_TOKEN_PATH, never ~/.ray), and stopped by signalling that one process: no
other Ray on the machine is touched.

The jobs run both ways a user submits them: the checkout uploaded as the working dir
(``python jobs/X.py``), and the installed package without any upload (``python -m clinfo_ray
X``). Every path handed to a job is absolute (the job's working directory is Ray's copy), and
one given a relative location refuses it. The README's train and tune jobs run as written, with
this module's shared folder for the README's ``/mnt/shared`` and ``--set`` overrides appended
(they win) only to make them small enough for 2 cores (``TINY``).
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from clinfo_ray.checkpointing import load_model_from_checkpoint, read_checkpoint_state
from clinfo_ray.config import load_config
from clinfo_ray.data import columns as C
from tests.datasets import SHAPES_IMAGES, SHAPES_SIZE, draw_shapes, shapes_split, write_csv
from tests.doc_commands import readme_job
from tests.gloo import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's: `ray`, `python` and `clinfo-ray` on the PATH
HEAD_START_S = 120
JOB_TIMEOUT_S = 600  # a tiny job takes 1 minute on 2 idle cores; more when they are shared

SHARED = "/mnt/shared"  # the README's shared folder, every node's
# What makes the README's quickstart jobs small enough for 2 cores and the shapes set: 16-px
# crops, a 4-wide CNN, 8 images a worker, 4 clusters, 2 epochs (appended: they win)
TINY = [
    f"--set={key}={value}"
    for key, value in {
        "data.image_size": 16,
        "data.batch_size_per_worker": 8,
        "model.cnn_width": 4,
        "model.proj_dim": 16,
        "clusters.k": 4,
        "optim.epochs": 2,
        "optim.warmup_epochs": 1,
        "eval.knn_k": 5,
    }.items()
]


@dataclass(frozen=True)
class Head:
    """A running head: its job API address and the environment of a client holding the token."""

    url: str
    env: dict[str, str]
    token: str
    temp_dir: Path

    def ray(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``ray ARGS`` as a client of this head (``env`` replaces the token-holding one)."""
        return subprocess.run(
            [str(BIN / "ray"), *args],
            cwd=REPO,
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def submit(
        self, submission_id: str, entrypoint: list[str], *, working_dir: bool, succeeds: bool = True
    ) -> str:
        """Submit a job, follow it to its end, check Ray calls it SUCCEEDED (FAILED when not
        ``succeeds``); its output."""
        upload = ["--working-dir", "."] if working_dir else []
        args = ["job", "submit", "--address", self.url, "--submission-id", submission_id]
        try:
            done = self.ray(*args, *upload, "--", *entrypoint, timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.ray("job", "stop", "--address", self.url, submission_id)
            raise
        logs = self.ray("job", "logs", "--address", self.url, submission_id).stdout
        output = f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}\n{logs[-4000:]}"
        assert (done.returncode == 0) == succeeds, output
        status = self.ray("job", "status", "--address", self.url, submission_id).stdout
        ended = "succeeded" if succeeds else "failed"
        assert f"Job '{submission_id}' {ended}" in status, status + logs[-4000:]
        return logs

    def get(self, path: str, token: str | None) -> int:
        """HTTP status of a GET of the job API, with the token as a bearer header or without."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as err:
            return err.code


def _client_env(token_file: Path) -> dict[str, str]:
    """This environment without any Ray setting of the caller's, plus token mode and the
    token file; the venv first on the PATH (what a job's `python` resolves to)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_USAGE_STATS_ENABLED="0",
        # a SIGTERM'd head otherwise waits up to 30 s for its node to drain (for Ray Serve)
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
    )
    return env


def _wait_until_up(head: Head, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + HEAD_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ray start --head exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if head.get("/api/jobs/", head.token) == 200:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    pytest.fail(
        f"the head's job API did not answer in {HEAD_START_S} s:\n{log.read_text()[-3000:]}"
    )


def _processes_of(session: int, temp_dir: Path) -> list[int]:
    """This head's processes: those of the session `ray start` opened (start_new_session), and
    any other whose command line names the head's temp dir. Never another process."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            if (
                os.getsid(pid) == session
                or str(temp_dir).encode() in (entry / "cmdline").read_bytes()
            ):
                pids.append(pid)
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return pids


def _stop(process: subprocess.Popen, temp_dir: Path) -> None:
    """SIGTERM to `ray start --block` alone: it ends the processes it started (signalling the
    whole group at once would end the GCS first, and the head would wait for it). Whatever of
    this head is left after that is killed by its own pid."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 15
    while (left := _processes_of(process.pid, temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    # short: Ray's unix sockets live under it (a socket path has at most 107 bytes)
    temp_dir = Path(tempfile.mkdtemp(prefix="clinfo-jobs-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_file = temp_dir / "auth_token"
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    env = _client_env(token_file)
    dashboard_port = free_port()
    log = temp_dir / "head.log"
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus=4",  # 2 cores: Train workers and Ray Data's tasks both need logical CPUs
        f"--temp-dir={temp_dir / 'ray'}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        # every port chosen here: Ray's fixed defaults may be taken by another cluster
        f"--port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--disable-usage-stats",
    ]
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            cwd=temp_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: no signal of the test's reaches it
        )
    running = Head(f"http://127.0.0.1:{dashboard_port}", env, token, temp_dir)
    try:
        _wait_until_up(running, process, log)
        yield running
    finally:
        _stop(process, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's folder for datasets and runs (absolute: jobs do not run in the checkout)."""
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def shared(work: Path) -> Path:
    """What the README's jobs call /mnt/shared: a folder every node (here: one) sees."""
    return work / "shared"


def as_written(script: str, shared: Path, *extra: str) -> tuple[list[str], bool]:
    """The README's ``ray job submit`` of ``jobs/SCRIPT.py`` as written, with ``shared`` for
    its /mnt/shared and ``extra`` appended: (entrypoint, whether it uploads the checkout)."""
    command = readme_job(script)
    args = [word.replace(SHARED, str(shared)) for word in command.argv[1:]]
    return ["python", f"jobs/{script}.py", *args, *extra], command.submit == ["--working-dir", "."]


@pytest.fixture(scope="module")
def shapes(head: Head, work: Path, shared: Path) -> Path:
    """The shapes dataset (tests/datasets.py), prepared by the prepare job itself, uploaded
    with the checkout as its working dir, where the README's jobs read their dataset
    (/mnt/shared/data/emoji: the README prepares the emoji set there, which needs npm)."""
    records = draw_shapes(work / "img", SHAPES_IMAGES, size=SHAPES_SIZE)
    for i, record in enumerate(records):
        record["split"] = shapes_split(i)
    annotations = write_csv(work / "a.csv", records)
    out = shared / "data" / "emoji"
    logs = head.submit(
        "prepare-shapes",
        [
            "python",
            "jobs/prepare.py",
            "imagefolder",
            f"--images={work / 'img'}",
            f"--annotations={annotations}",
            f"--out={out}",
        ],
        working_dir=True,
    )
    assert f"-> {out}" in logs, logs[-3000:]
    return out


def _tiny_config(path: Path, dataset: Path, output_dir: Path, name: str, workers: int) -> Path:
    """A train config small enough for 2 cores: 16-px crops, a 4-wide CNN, 2 epochs."""
    config = {
        "data": {
            "dataset_dir": str(dataset),
            "image_size": 16,
            "batch_size_per_worker": 8,
            "augment_on": "worker",
            "cache": "worker",
        },
        "clusters": {"method": "tags", "top_k": 2},
        "model": {"backbone": "small_cnn", "cnn_width": 4, "proj_dim": 16},
        "loss": {"method": "clinfonce"},
        "optim": {"epochs": 2, "warmup_epochs": 1},
        "eval": {"knn_every": 1, "knn_k": 5},
        "run": {
            "name": name,
            "output_dir": str(output_dir),
            "num_workers": workers,
            "cpus_per_worker": 0.5,
            "device": "cpu",
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _check_run(run_dir: Path, logs: str) -> None:
    """Two epochs in metrics.jsonl, the last checkpoint loads, and the job printed its summary
    (run folder and checkpoint) as `clinfo-ray train` does."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1.0, 2.0]
    assert all(r["train/loss"] > 0 for r in epochs)
    lines = logs.splitlines()
    start = lines.index("{")  # the summary: the one JSON object the command prints, indented
    summary = json.loads("\n".join(lines[start : lines.index("}", start) + 1]))
    assert Path(summary["run_dir"]) == run_dir
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.parent == run_dir
    assert read_checkpoint_state(checkpoint).epoch == 2
    _, config = load_model_from_checkpoint(checkpoint)
    assert config.run.name == run_dir.name and config.model.cnn_width == 4


def test_prepare_job_wrote_the_dataset(shapes: Path) -> None:
    manifest = json.loads((shapes / C.MANIFEST).read_text())
    assert manifest["rows"] == {C.TRAIN: 48, C.TEST: 12}


def test_the_readme_train_job_runs_as_written(head: Head, shapes: Path, shared: Path) -> None:
    """The README's `ray job submit --working-dir . -- python jobs/train.py --config quickstart
    --set data.dataset_dir=/mnt/shared/... --set run.output_dir=/mnt/shared/runs`."""
    entrypoint, upload = as_written("train", shared, *TINY)
    logs = head.submit("train-upload", entrypoint, working_dir=upload)
    _check_run(shared / "runs" / "quickstart", logs)
    # the upload is the checkout less what .gitignore (.venv, data/, runs/, .git, caches) and
    # .rayignore (docs/) name
    # (one package per content of the checkout: the prepare job's too, unless files changed)
    unpacked = (head.temp_dir / "ray").glob("session_*/runtime_resources/working_dir_files/*")
    packages = [p for p in unpacked if p.is_dir()]
    assert packages
    for package in packages:
        names = {p.name for p in package.iterdir()}
        assert {"jobs", "clinfo_ray", "pyproject.toml"} <= names
        left_out = {".venv", "data", "runs", "docs", ".git", ".mypy_cache", ".pytest_cache"}
        assert not names & left_out, names
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        assert size < 2 * 2**20, f"{size / 2**20:.1f} MiB uploaded"


def test_train_job_from_the_installed_package(head: Head, shapes: Path, work: Path) -> None:
    """No upload: the job runs the installed `clinfo_ray` (here the venv's editable install);
    --set overrides reach it as they reach the command."""
    out = work / "runs"
    config = _tiny_config(work / "installed.yaml", shapes, out, "unused", workers=1)
    logs = head.submit(
        "train-installed",
        [
            "python",
            "-m",
            "clinfo_ray",
            "train",
            "--config",
            str(config),
            "--set",
            "run.name=installed",
        ],
        working_dir=False,
    )
    _check_run(out / "installed", logs)


def test_a_client_without_the_token_is_refused(head: Head) -> None:
    assert head.get("/api/jobs/", head.token) == 200
    assert head.get("/api/jobs/", None) == 401
    assert head.get("/api/jobs/", secrets.token_hex(32)) in (401, 403)
    # the CLI without the token: refused, whatever the mode it asks in
    no_token = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH_")}
    for mode in ("disabled", "token"):
        denied = head.ray(
            "job",
            "list",
            "--address",
            head.url,
            env={**no_token, "RAY_AUTH_MODE": mode, "HOME": str(head.temp_dir)},
        )
        assert denied.returncode != 0, denied.stdout
        assert "token" in denied.stderr.lower(), denied.stderr[-2000:]
    listed = head.ray("job", "list", "--address", head.url)
    assert listed.returncode == 0, listed.stderr[-2000:]


def test_the_readme_tune_job_runs_as_written(head: Head, shapes: Path, shared: Path) -> None:
    """The README's tune job (a shipped space found in the uploaded checkout), 2 trials of 1
    worker."""
    small = [*TINY, "--set=run.num_workers=1", "--num-samples=2"]
    entrypoint, upload = as_written("tune", shared, *small)
    head.submit("tune-two", entrypoint, working_dir=upload)
    space = entrypoint[entrypoint.index("--space") + 1]
    results = shared / "runs" / "tune" / space
    with (results / "trials.csv").open(newline="") as handle:
        trials = list(csv.DictReader(handle))
    assert len(trials) == 2, trials
    assert all(t["status"] != "errored" for t in trials), trials
    assert all(0.03 <= float(t["optim.lr"]) <= 1.0 for t in trials), trials
    best = load_config(results / "best.yaml")  # a train config: `clinfo-ray train` runs it
    assert best.optim.lr in [pytest.approx(float(t["optim.lr"])) for t in trials]


def test_a_job_given_relative_locations_refuses_them(head: Head) -> None:
    """The quickstart's own data/emoji and runs inside a job would name Ray's temporary copy of
    the upload: the job ends in one line saying so, before it starts any Ray work."""
    logs = head.submit(
        "train-relative",
        ["python", "jobs/train.py", "--config", "quickstart"],
        working_dir=True,
        succeeds=False,
    )
    errors = [line for line in logs.splitlines() if line.startswith("clinfo-ray train: error:")]
    assert len(errors) == 1, logs[-3000:]
    assert "data.dataset_dir: 'data/emoji' is relative" in errors[0]
    assert "train-relative" in errors[0] and "absolute path every node mounts" in errors[0]
