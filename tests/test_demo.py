"""The demo: two trials of the study, their summary rows and table (the full demo is
`make demo`, minutes long)."""

from __future__ import annotations

from clinfo_ray.commands.demo import DEMO_METHODS, DEMO_STUDY, format_table, summary_row
from clinfo_ray.study.study_file import load_study

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
