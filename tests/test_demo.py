"""The demo's summary rows and table (the full demo is `make demo`, minutes long)."""

from __future__ import annotations

from pathlib import Path

from clinfo_ray.commands.demo import METHODS, _row, format_table
from clinfo_ray.config import apply_overrides, load_config
from clinfo_ray.training.launch import TrainOutcome

REQUIRED = {"method", "num_clusters", "mutual_information_bits", "linear_top1", "knn_top1"}


def test_methods_share_the_budget_and_differ_only_in_clusters() -> None:
    base = load_config("quickstart")
    cfgs = [apply_overrides(base, overrides) for _, overrides in METHODS]
    assert {c.cluster_method for c in cfgs} == {"tags-kmeans", "instance"}
    for a in cfgs[1:]:
        assert (a.optim, a.model, a.data, a.run) == (
            cfgs[0].optim,
            cfgs[0].model,
            cfgs[0].data,
            cfgs[0].run,
        )


def test_summary_rows_have_the_documented_keys_and_the_table_shows_them() -> None:
    cfg = apply_overrides(load_config("quickstart"), METHODS[0][1])
    outcome = TrainOutcome(
        run_dir=Path("runs/demo/clinfonce"),
        checkpoint=Path("runs/demo/clinfonce/checkpoint_epoch0060"),
        metrics={"train_seconds": 12.5, "eval/knn_top1": 0.35},
        cluster_stats={
            "num_clusters": 100,
            "mutual_information_bits": 4.02,
            "conditional_entropy_bits": 1.74,
        },
    )
    row = _row(
        "Cl-InfoNCE (tags-kmeans)",
        cfg,
        outcome,
        {"linear_top1": 0.5, "linear_top5": 0.7, "knn_top1": 0.4},
    )
    assert REQUIRED <= row.keys()
    assert (row["num_clusters"], row["linear_top1"], row["knn_top1"]) == (100, 0.5, 0.4)
    table = format_table([row])
    assert "Cl-InfoNCE (tags-kmeans)" in table and "4.02" in table and "1.74" in table
    assert "0.500" in table and "0.400" in table and "0.350" in table
    # which split each accuracy comes from: the online kNN on val, the final scores on test
    assert row["val_knn_top1"] == 0.35
    assert all(head in table.splitlines()[0] for head in ("val kNN", "test linear", "test kNN"))
