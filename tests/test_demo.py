"""The demo: two trials of the study, their summary rows and table, and its closing neighbours
picture (the full demo is `make demo`, minutes long: here its training and evaluation are
stubbed and the neighbours step runs for real on the small shapes dataset)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from clinfo_ray.checkpointing import save_checkpoint
from clinfo_ray.commands.demo import (
    DEMO_METHODS,
    DEMO_STUDY,
    NEIGHBOR_K,
    NEIGHBOR_QUERIES,
    PICTURE,
    demo_schedule,
    format_table,
    summary_row,
)
from clinfo_ray.commands.main import main
from clinfo_ray.config import DataConfig, ModelConfig, TrainConfig
from clinfo_ray.data import columns as C
from clinfo_ray.model import build_model
from clinfo_ray.study.study_file import load_study
from clinfo_ray.training.launch import TrainOutcome

SCORES = {
    "val": {"linear_top1": 0.51, "knn_top1": 0.45},
    "test": {"linear_top1": 0.5, "knn_top1": 0.4, "linear_top5": 0.7},
    "probe": {"weight_decay": 1e-3, "epochs": 100.0, "train_top1": 0.7},
}


def test_the_demo_runs_two_methods_of_the_study_with_one_budget() -> None:
    study = load_study(DEMO_STUDY)
    cfgs = [study.trial_config(method, 0) for method in DEMO_METHODS]
    assert {c.cluster_method for c in cfgs} == {"tags-kmeans", "instance"}
    for a in cfgs[1:]:  # the same data, model, schedule and workers: only the clusters differ
        assert (a.optim, a.model, a.data, a.run) == (
            cfgs[0].optim,
            cfgs[0].model,
            cfgs[0].data,
            cfgs[0].run,
        )
    assert cfgs[0].data.dataset_dir == study.prepare.out  # the study's own dataset, prepared


def test_the_demo_schedule_scales_the_warm_up_and_keeps_the_study_s_own() -> None:
    cfg = load_study(DEMO_STUDY).trial_config("simclr", 0)
    assert cfg.optim.epochs == 22
    assert demo_schedule(cfg, None) == {} and demo_schedule(cfg, 22) == {}
    short = demo_schedule(cfg, 11)
    assert short == {"optim.epochs": 11, "optim.warmup_epochs": cfg.optim.warmup_epochs / 2}
    assert demo_schedule(cfg, 1) == {"optim.epochs": 1, "optim.warmup_epochs": 0.0}


def test_a_bad_epoch_count_fails_in_one_line_before_ray(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["clinfo-ray demo: error: --epochs: 0 is not >= 1"]


def test_summary_rows_have_the_documented_keys_and_the_table_shows_them() -> None:
    study = load_study(DEMO_STUDY)
    cfg = study.trial_config("tfidf-k100", 0)
    clusters = {
        "num_clusters": 100.0,
        "mutual_information_bits": 4.02,
        "conditional_entropy_bits": 1.74,
    }
    row = summary_row("tfidf-k100", "about", cfg, clusters, SCORES, 12.5)
    assert (row["num_clusters"], row["test_linear_top1"], row["val_knn_top1"]) == (100.0, 0.5, 0.45)
    assert row["probe_weight_decay"] == 1e-3 and row["epochs"] == cfg.optim.epochs
    table = format_table([row, summary_row("simclr", "", cfg, None, SCORES, 1.0)])
    head, _, first, second = table.splitlines()
    assert all(h in head for h in ("val linear", "val kNN", "test linear", "test kNN"))
    assert first.split() == [
        "tfidf-k100",
        "100",
        "4.02",
        "1.74",
        "0.510",
        "0.450",
        "0.500",
        "0.400",
    ]
    assert second.split()[:4] == ["simclr", "-", "-", "-"]  # no cluster statistics


def _untrained_checkpoint(folder: Path, dataset_dir: Path, seed: int) -> Path:
    """A small CNN's checkpoint, as a trial of the demo would leave (untrained: seconds)."""
    torch.manual_seed(seed)
    cfg = TrainConfig(
        data=DataConfig(dataset_dir=str(dataset_dir), image_size=16),
        model=ModelConfig(backbone="small_cnn", cnn_width=4),
    )
    model = build_model(cfg.model)
    return save_checkpoint(folder / "checkpoint_000001", model=model, epoch=1, step=1, config=cfg)


def test_the_demo_ends_with_the_neighbours_picture_of_both_methods(
    shapes_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The demo's own run, its training and evaluation stubbed: each method's checkpoint is
    embedded by the embed path for real and the picture is drawn; its path is the last line."""
    checkpoints = {
        method: _untrained_checkpoint(tmp_path / "runs" / method, shapes_dataset, seed)
        for seed, method in enumerate(DEMO_METHODS)
    }

    def train(cfg: TrainConfig) -> TrainOutcome:  # makes the run's folder, as training does
        assert cfg.optim.epochs == 3  # --epochs 3: a run named for its schedule
        run_dir = Path(cfg.run.output_dir) / cfg.run.name
        run_dir.mkdir(parents=True)
        method = cfg.run.name.removesuffix("-e3")
        assert method != cfg.run.name
        return TrainOutcome(run_dir, checkpoints[method], {}, cluster_stats=None)

    def evaluate_trial(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return SCORES

    monkeypatch.setattr("clinfo_ray.training.launch.train", train)
    monkeypatch.setattr("clinfo_ray.study.evaluate.evaluate_trial", evaluate_trial)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--epochs", "3"]
    argv += ["--set", f"data.dataset_dir={shapes_dataset}"]
    level = logging.getLogger().level
    try:  # shapes have no coarse label: frame by the label
        assert main([*argv, "--set", "data.label_column=label"]) == 0
    finally:
        logging.getLogger().setLevel(level)  # the demo quiets the root logger
    lines = capsys.readouterr().out.strip().splitlines()

    picture = out / PICTURE
    assert lines[-1] == f"neighbours picture: {picture}"
    said = next(line for line in lines if line.startswith("1 seed (seed 0) per method"))
    assert said.startswith("1 seed (seed 0) per method, 3 epochs (the study trains 22), evaluated")
    assert [line.split(":")[0].strip() for line in lines[-3:-1]] == [
        "Cl-InfoNCE (tfidf-k100)",
        "SimCLR",
    ]
    blob = picture.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(blob) < 2_000_000
    with Image.open(picture) as image:
        image.verify()
    with Image.open(picture) as image:
        width, height = image.size
    # 72 px a cell (0.9 in at 80 dpi); a row a query; the query, then a gap and K per method
    columns = 1 + len(DEMO_METHODS) * (NEIGHBOR_K + 1)
    assert abs(width - columns * 72) <= 2 and abs(height - (NEIGHBOR_QUERIES + 0.4) * 72) <= 2
    for method in DEMO_METHODS:  # what clinfo-ray embed writes, for the train and test splits
        manifest = json.loads((out / "embeddings" / method / "manifest.json").read_text())
        assert manifest["rows"] == {C.TRAIN: 48, C.TEST: 12}
        assert manifest["encoder"]["checkpoint"] == str(checkpoints[method].resolve())
