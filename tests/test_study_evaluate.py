"""A study trial's evaluation: the probe's setting chosen by grouped k-fold cross-validation on
the fitting rows (never the validation rows), one probe scoring validation and test, and the
probe + kNN step in a Ray task holding the trial's own resources."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from clinfo_ray.checkpointing import save_checkpoint
from clinfo_ray.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from clinfo_ray.devices import ray_uses_gpu
from clinfo_ray.evaluation.linear_probe import train_probe
from clinfo_ray.evaluation.probe_selection import best_setting, cross_validate, probe_folds
from clinfo_ray.evaluation.retrieval import retrieval_metrics
from clinfo_ray.model import build_model
from clinfo_ray.study.evaluate import (
    PROBE_MAX_CPUS,
    evaluate_trial,
    probe_and_knn,
    probe_task_resources,
    run_probe_task,
)
from clinfo_ray.study.spec import ProbeGrid

EVAL = EvalConfig(linear_epochs=5, linear_lr=0.1, linear_batch_size=32, knn_k=5)
GRID = ProbeGrid(weight_decays=(0.0, 0.1), epochs=(2, 5), folds=3)
Labelled = tuple[np.ndarray, np.ndarray]


def emoji_ids(emoji: int, styles: int = 4) -> list[str]:
    """Ids as the multi-style emoji set writes them: ``style/code``, one per rendering."""
    return [f"style{s}/{e:04X}" for e in range(emoji) for s in range(styles)]


def blobs(rng: np.random.Generator, n: int, classes: int = 5, dim: int = 16) -> Labelled:
    """Noisy classes: a probe learns them, not perfectly (so settings and folds differ)."""
    centres = rng.standard_normal((classes, dim))
    y = rng.integers(0, classes, n)
    return (centres[y] + 1.5 * rng.standard_normal((n, dim))).astype(np.float32), y


def test_folds_are_deterministic_grouped_and_near_n_over_k() -> None:
    ids = emoji_ids(600)  # 2,400 rows, 600 groups
    folds = probe_folds(ids, 3, "id_suffix")
    assert folds.shape == (len(ids),) and folds.dtype == np.int64
    assert set(folds.tolist()) == {0, 1, 2}  # every row in exactly one of the k folds
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = probe_folds([ids[i] for i in order], 3, "id_suffix")
    assert np.array_equal(shuffled, folds[order])  # a row's fold is its id's, in any order
    per_emoji = folds.reshape(600, 4)  # the 4 renderings of one emoji: one fold
    assert (per_emoji == per_emoji[:, :1]).all()
    groups = np.bincount(per_emoji[:, 0], minlength=3)  # ~Binomial(600, 1/3): sd 11.5
    assert np.abs(groups - 200).max() < 40, groups
    by_id = probe_folds(ids, 3, "id").reshape(600, 4)  # ungrouped: renderings spread out
    assert (by_id != by_id[:, :1]).any(axis=1).mean() > 0.5
    assert not np.array_equal(probe_folds(ids, 3, "id_suffix"), probe_folds(ids, 4, "id_suffix"))
    with pytest.raises(ValueError, match="k >= 2"):
        probe_folds(ids, 1)


def test_cv_score_is_the_count_weighted_mean_over_folds() -> None:
    rng = np.random.default_rng(1)
    x, y = blobs(rng, 150)
    y[:10] = -1  # unlabelled rows neither train nor count
    folds = probe_folds(emoji_ids(150, styles=1), 3)
    (tried,) = cross_validate(x, y, folds, EVAL, [(0.1, 3)], seed=4, device="cpu")
    hits, rows = 0.0, 0
    for f in range(3):
        inside = folds == f
        setting = dataclasses.replace(EVAL, linear_weight_decay=0.1, linear_epochs=3)
        probe = train_probe(x[~inside], y[~inside], setting, seed=4, device="cpu")
        score = probe.score(x[inside], y[inside])
        hits, rows = hits + score["top1"] * score["rows"], rows + int(score["rows"])
    assert rows == 140 and tried["cv_top1"] == pytest.approx(hits / rows, abs=1e-12)
    assert tried["weight_decay"] == 0.1 and tried["epochs"] == 3


def test_ties_go_to_the_first_setting_tried() -> None:
    tried = [{"cv_top1": 0.5, "n": 0}, {"cv_top1": 0.7, "n": 1}, {"cv_top1": 0.7, "n": 2}]
    assert best_setting(tried)["n"] == 1


def _trial_data(seed: int) -> tuple[Labelled, np.ndarray, Labelled]:
    rng = np.random.default_rng(seed)
    fit, val = blobs(rng, 240), blobs(rng, 60)
    return fit, probe_folds(emoji_ids(60), GRID.folds, "id_suffix"), val


def test_the_choice_never_reads_the_validation_rows() -> None:
    fit, folds, val = _trial_data(2)
    first, _ = probe_and_knn(fit, folds, {"val": val}, EVAL, GRID, 0, gpu=False)
    other = (val[0][::-1] * 2.0 + 1.0, (val[1][::-1] + 1) % 5)  # other features and labels
    second, _ = probe_and_knn(fit, folds, {"val": other}, EVAL, GRID, 0, gpu=False)
    assert first["probe_grid"] == second["probe_grid"] and first["probe"] == second["probe"]
    assert first["val"] != second["val"]  # the validation rows were scored, not chosen on
    assert [(t["weight_decay"], t["epochs"]) for t in first["probe_grid"]] == GRID.settings()
    assert all("val_top1" not in t and 0 <= t["cv_top1"] <= 1 for t in first["probe_grid"])
    assert first["probe"]["folds"] == 3
    assert first["probe"]["cv_top1"] == max(t["cv_top1"] for t in first["probe_grid"])


def test_the_probe_that_scores_test_is_the_probe_that_was_validated() -> None:
    """Scoring a test set whose labels reach beyond the training rows' leaves the classifier
    as it is with validation alone. (The probe used to be sized by the larger label of the
    training and the scored split, so its init and shuffles changed with the split scored.)"""
    fit, folds, val = _trial_data(3)
    rng = np.random.default_rng(4)
    test = blobs(rng, 50, classes=7)  # labels 5 and 6: never in training
    assert val[1].max() < 5 <= test[1].max()
    alone, probe_val = probe_and_knn(fit, folds, {"val": val}, EVAL, GRID, 0, gpu=False)
    both, probe_both = probe_and_knn(
        fit, folds, {"val": val, "test": test}, EVAL, GRID, 0, gpu=False
    )
    assert probe_val.num_classes == 5
    assert torch.equal(probe_val.weight, probe_both.weight)
    assert torch.equal(probe_val.bias, probe_both.bias)
    assert alone["val"] == both["val"] and alone["probe"] == both["probe"]
    unseen = np.isin(test[1], [5, 6])
    assert both["test"]["linear_top5"] <= 1 - unseen.mean()  # an unseen class is a miss


def test_the_reported_val_score_is_the_chosen_probes_score_on_val() -> None:
    fit, folds, val = _trial_data(5)
    result, probe = probe_and_knn(fit, folds, {"val": val}, EVAL, GRID, 7, gpu=False)
    chosen = result["probe"]
    x = (torch.from_numpy(val[0]) - probe.mean) / probe.std
    by_hand = ((x @ probe.weight.T + probe.bias).argmax(dim=1).numpy() == val[1]).mean()
    assert result["val"]["linear_top1"] == pytest.approx(by_hand, abs=1e-12)
    setting = dataclasses.replace(
        EVAL, linear_weight_decay=chosen["weight_decay"], linear_epochs=int(chosen["epochs"])
    )
    again = train_probe(*fit, setting, seed=7, device="cpu")  # an independent call
    assert again.score(*val)["top1"] == result["val"]["linear_top1"]
    assert again.train_top1 == chosen["train_top1"]
    found = retrieval_metrics(*fit, *val, (1, 5, 10))  # retrieval beside it, bank: fit
    assert {k: result["val"][k] for k in ("recall_at_1", "recall_at_5", "map_at_r")} == {
        k: found[k] for k in ("recall_at_1", "recall_at_5", "map_at_r")
    }


def test_the_probe_task_asks_for_the_trials_own_share() -> None:
    cpu = TrainConfig(run=RunConfig(num_workers=3, cpus_per_worker=0.5))
    assert probe_task_resources(cpu, False) == {"num_cpus": 1.5, "num_gpus": 0.0}
    many = TrainConfig(run=RunConfig(num_workers=16, cpus_per_worker=2.0))
    assert probe_task_resources(many, False)["num_cpus"] == PROBE_MAX_CPUS
    gpu = TrainConfig(
        run=RunConfig(num_workers=4, cpus_per_worker=6.0, device="gpu"),
        eval=EvalConfig(device="gpu"),
    )
    assert ray_uses_gpu(gpu.eval.device)  # "gpu" resolves without asking Ray
    assert probe_task_resources(gpu, True) == {"num_cpus": 6.0, "num_gpus": 1.0}  # one worker's


def test_the_probe_runs_in_a_task_holding_the_trials_cpus(ray_session: None) -> None:
    import ray

    fit, folds, val = _trial_data(6)
    cfg = TrainConfig(run=RunConfig(num_workers=3, cpus_per_worker=0.5), eval=EVAL)
    remote = run_probe_task(fit, folds, {"val": val}, cfg, GRID, gpu=False)
    local, _ = probe_and_knn(fit, folds, {"val": val}, EVAL, GRID, cfg.eval_seed, gpu=False)
    assert remote["task"]["resources"] == {"CPU": 1.5}
    assert remote["task"]["task_id"] not in (None, ray.get_runtime_context().get_task_id())
    assert remote["device"] == {"probe": "cpu", "knn": "cpu"}
    assert {k: remote[k] for k in local} == local  # the same scores as in this process


@pytest.fixture(scope="module")
def checkpoint(shapes_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = TrainConfig(
        data=DataConfig(dataset_dir=str(shapes_dataset), image_size=16, val_fraction=0.25),
        model=ModelConfig(backbone="small_cnn", cnn_width=4),
        run=RunConfig(num_workers=2, cpus_per_worker=0.5),
        eval=dataclasses.replace(EVAL, device="cpu"),
    )
    run = tmp_path_factory.mktemp("run")
    model = build_model(cfg.model)
    return save_checkpoint(run / "checkpoint_000001", model=model, epoch=1, step=1, config=cfg)


@pytest.mark.slow
def test_a_trials_record_keeps_its_keys_and_adds_the_cv_scores(checkpoint: Path) -> None:
    """End to end from a checkpoint: the keys clinfo_ray/study/run.py reads are all there."""
    from clinfo_ray.checkpointing import read_checkpoint_state

    cfg = read_checkpoint_state(checkpoint).train_config()
    result = evaluate_trial(cfg, checkpoint, GRID, evaluate_test=True)
    assert set(result) >= {"val", "test", "probe", "probe_grid", "rows", "seconds"}
    assert set(result["val"]) == {"linear_top1", "knn_top1"}
    retrieval = {"recall_at_1", "recall_at_5", "recall_at_10", "map_at_r"}
    assert set(result["test"]) == {"linear_top1", "linear_top5", "knn_top1", *retrieval}
    probe = result["probe"]
    assert set(probe) == {"weight_decay", "epochs", "train_top1", "cv_top1", "folds"}
    assert probe["folds"] == 3 and len(result["probe_grid"]) == len(GRID.settings())
    assert result["rows"]["fit"] + result["rows"]["val"] == 48 and result["rows"]["test"] == 12
    assert result["task"]["resources"] == {"CPU": 1.0}  # 2 workers x 0.5 CPU
