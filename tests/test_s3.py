"""Datasets, cluster tables and runs in a bucket of the session's S3 server on loopback (moto):
the commands fail in one line before Ray starts when a bucket cannot be used, and what they
write to the bucket reads back as the same dataset a local folder holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clinfo_ray.commands.main import main
from clinfo_ray.data import columns as C
from clinfo_ray.storage import location as loc
from tests.datasets import SHAPES_IMAGES, SHAPES_SIZE, draw_shapes, shapes_split, write_csv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that reaches Ray's start fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr("clinfo_ray.commands.common.connect_ray", refuse)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"clinfo-ray {argv[0]}: error: "), lines[0]
    return lines[0].split(": error: ", 1)[1]


def _train(dataset: str, *more: str) -> list[str]:
    return ["train", "--config", "quickstart", "--set", f"data.dataset_dir={dataset}", *more]


def test_a_bucket_that_cannot_be_used_fails_before_ray(
    s3_prefix: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_ray: None,
    tmp_path: Path,
) -> None:
    loc.write_text(loc.join(s3_prefix, "junk", "x.txt"), "not a dataset")
    missing = "s3://no-such-bucket/emoji"
    assert _one_line_error(capsys, _train(missing)) == (
        f"data.dataset_dir: {missing}: no bucket 'no-such-bucket'"
    )
    junk = loc.join(s3_prefix, "junk")
    assert _one_line_error(capsys, _train(junk)) == (
        f"data.dataset_dir: {junk}: no manifest.json; not a prepared clinfo-ray dataset"
    )
    out = "s3://no-such-bucket/tables/t.parquet"
    error = _one_line_error(capsys, ["clusters", "--data", junk, "--out", out])
    assert error.startswith(f"data.dataset_dir: {junk}: no manifest.json")
    images = tmp_path / "img"
    records = draw_shapes(images, 2, size=SHAPES_SIZE)
    annotations = write_csv(tmp_path / "a.csv", records)
    prepare = ["prepare", "imagefolder", "--images", str(images), "--annotations"]
    prepare += [str(annotations), "--out", "s3://no-such-bucket/ds"]
    assert _one_line_error(capsys, prepare) == (
        "prepare.out: s3://no-such-bucket/ds: no bucket 'no-such-bucket'"
    )
    with monkeypatch.context() as env:
        env.delenv("AWS_ACCESS_KEY_ID")
        assert "no S3 credentials" in _one_line_error(capsys, _train(junk))
    with monkeypatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        assert _one_line_error(capsys, _train(junk)) == (
            f"data.dataset_dir: {junk}: cannot reach the storage endpoint http://127.0.0.1:9"
        )


def test_access_denied_fails_before_ray(
    s3_prefix: str, capsys: pytest.CaptureFixture[str], no_ray: None, authentication_on: None
) -> None:
    error = _one_line_error(capsys, _train(s3_prefix))
    assert error.startswith(f"data.dataset_dir: {s3_prefix}: access denied")


def test_the_command_line_says_it_in_one_line(s3_bucket: str) -> None:
    """The same, through the console script: no traceback, no Ray start-up log."""
    result = subprocess.run(
        [sys.executable, "-m", "clinfo_ray", *_train("s3://no-such-bucket/emoji")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "clinfo-ray train: error: data.dataset_dir: s3://no-such-bucket/emoji: no bucket "
        "'no-such-bucket'"
    ]


def _prepare_shapes(root: Path, out: str) -> None:
    records = draw_shapes(root / "img", SHAPES_IMAGES, size=SHAPES_SIZE)
    for i, record in enumerate(records):
        record["split"] = shapes_split(i)
    annotations = write_csv(root / "a.csv", records)
    argv = ["prepare", "imagefolder", "--images", str(root / "img")]
    assert main([*argv, "--annotations", str(annotations), "--out", out]) == 0


def _kill_rank_1_after(run: str, epoch: int, killed: list[int]) -> None:
    """SIGKILL the rank-1 worker of a run in the bucket once Ray Train has registered the
    checkpoint of ``epoch`` there; ``killed``: [pid, the epoch registered then]."""
    from clinfo_ray.training.worker import PID_DIR

    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            snapshot = json.loads(loc.read_text(loc.join(run, "checkpoint_manager_snapshot.json")))
            name = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
            registered = int(name.removeprefix("checkpoint_epoch"))
        except (OSError, ValueError, KeyError, TypeError):
            registered = 0
        if registered >= epoch:
            pid = int(json.loads(loc.read_text(loc.join(run, PID_DIR, "rank1")))["pid"])
            os.kill(pid, signal.SIGKILL)
            killed.extend([pid, registered])
            return
        time.sleep(0.1)


def _printed_json(capsys: pytest.CaptureFixture[str]) -> dict:
    """The JSON a command printed, from its own first line (a raylet warning may precede it)
    to its end (a line may follow it)."""
    out = capsys.readouterr().out
    start = 0 if out.startswith("{\n") else out.index("\n{\n") + 1
    found: dict = json.JSONDecoder().raw_decode(out[start:])[0]
    return found


@pytest.mark.slow
def test_end_to_end_in_the_bucket(
    s3_prefix: str,
    shapes_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With only the bucket (no local dataset or run folder): prepare -> clusters -> train with
    a worker killed mid-run (resumed from the bucket's checkpoint) -> the same command again,
    resumed from the bucket -> eval -> export -> embed with the export. The dataset streams
    the same rows and images as the same source prepared locally."""
    from clinfo_ray.data.manifest import read_manifest
    from clinfo_ray.data.read.stream import StreamPlan

    monkeypatch.chdir(tmp_path)  # whatever is written locally would land here
    data = loc.join(s3_prefix, "shapes")
    _prepare_shapes(tmp_path, data)
    assert capsys.readouterr().out.strip().endswith(f"-> {data}")
    local = read_manifest(shapes_dataset)
    remote = read_manifest(data)
    assert (remote.rows, remote.files) == (local.rows, local.files)
    rows = {}
    for where in (str(shapes_dataset), data):
        plan = StreamPlan.build(where, augmentation=None, decode_size=SHAPES_SIZE)
        batch = plan.dataset().take_batch(SHAPES_IMAGES, batch_format="numpy")
        rows[where] = dict(zip(batch["index"].tolist(), batch["image_u8"], strict=True))
    assert sorted(rows[data]) == list(range(local.rows[C.TRAIN]))
    for index, image in rows[str(shapes_dataset)].items():
        np.testing.assert_array_equal(rows[data][index], image)

    table = loc.join(s3_prefix, "tables", "labels.parquet")
    assert main(["clusters", "--data", data, "--method", "labels", "--out", table]) == 0
    assert _printed_json(capsys)["num_clusters"] == len(local.class_names)
    assert loc.is_file(loc.join(s3_prefix, "tables", "labels.stats.json"))

    runs = loc.join(s3_prefix, "runs")
    train = ["train", "--config", "quickstart"]
    for item in (
        f"data.dataset_dir={data}",
        f"clusters.table_path={table}",
        "data.image_size=16",
        "data.batch_size_per_worker=8",
        "model.cnn_width=8",
        "optim.warmup_epochs=0",
        "eval.knn_every=0",
        f"run.output_dir={runs}",
        "run.name=tiny",
        "run.cpus_per_worker=0.5",
    ):
        train += ["--set", item]
    run = loc.join(runs, "tiny")
    killed: list[int] = []  # rank 1's worker, SIGKILLed once epoch 1's checkpoint is registered
    killer = threading.Thread(target=_kill_rank_1_after, args=(run, 1, killed), daemon=True)
    killer.start()
    assert main([*train, "--set", "optim.epochs=3", "--set", "run.max_failures=2"]) == 0
    killer.join(timeout=5)
    first = _printed_json(capsys)
    assert killed, "the test never killed a worker"
    assert first["run_dir"] == run and first["checkpoint"] == loc.join(run, "checkpoint_epoch0003")
    assert main([*train, "--set", "optim.epochs=4"]) == 0  # the same run, one epoch more
    second = _printed_json(capsys)
    assert second["metrics"]["epoch"] == 4.0
    events = [
        json.loads(line) for line in loc.read_text(loc.join(run, "metrics.jsonl")).splitlines()
    ]
    epochs = [e["epoch"] for e in events if e["event"] == "epoch"]
    resumes = [e["after_epoch"] for e in events if e["event"] == "resume"]
    # after the kill, from the newest checkpoint in the bucket (or a later one); then the rerun
    assert len(resumes) == 2 and resumes[0] >= killed[1] and resumes[1] == 3
    assert sorted(set(epochs)) == [1.0, 2.0, 3.0, 4.0] and epochs[-1] == 4.0
    assert {"config.json", "checkpoint_epoch0004", "tensorboard"} <= set(loc.list_names(run))

    checkpoint = second["checkpoint"]
    evaluation = loc.join(s3_prefix, "eval")
    argv = ["eval", "--checkpoint", checkpoint, "--out", evaluation]
    assert main([*argv, "--set", "eval.linear_epochs=3"]) == 0
    result = _printed_json(capsys)
    assert result["json_path"] == loc.join(evaluation, "checkpoint_epoch0004.json")
    assert json.loads(loc.read_text(result["json_path"]))["epoch"] == 4

    export = loc.join(s3_prefix, "export")
    assert main(["export", "--checkpoint", checkpoint, "--out", export]) == 0
    capsys.readouterr()
    assert "preprocess.json" in loc.list_names(export)
    embeddings = loc.join(s3_prefix, "embeddings")
    assert main(["embed", "--encoder", export, "--data", data, "--out", embeddings]) == 0
    manifest = json.loads(loc.read_text(loc.join(embeddings, "manifest.json")))
    assert manifest["rows"] == local.rows and manifest["encoder"]["export_dir"] == export
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "img"]  # nothing else written locally
