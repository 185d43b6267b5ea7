"""``make demo``: Cl-InfoNCE with tag clusters against SimCLR on the real emoji-with-hashtags set.

Prepares the emoji set (npm packages, cached), trains both methods with the same budget on a
local Ray with 2 Train workers, evaluates both (linear probe and kNN on frozen features), and
prints a table; the same rows go to ``runs/demo/summary.json``. Running it again resumes or
reuses finished runs of the same names (``--fresh`` starts over). ``clinfo-ray demo`` (what
``make demo`` runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from clinfo_ray.config import TrainConfig, apply_overrides, load_config

DEMO_CONFIG = "quickstart"  # the bundled config (clinfo_ray/configs/quickstart.yaml)

# (row name, config overrides): the same budget, only the clusters differ.
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("Cl-InfoNCE (tags-kmeans)", {"loss.method": "clinfonce", "clusters.method": "tags-kmeans"}),
    ("SimCLR", {"loss.method": "simclr"}),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="data/emoji", help="prepared emoji set (made if missing)")
    parser.add_argument("--out", default="runs/demo", help="runs, summary.json, TensorBoard")
    parser.add_argument("--config", default=DEMO_CONFIG, help="a config file or bundled name")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fresh", action="store_true", help="delete earlier demo runs first")


def _row(name: str, cfg: TrainConfig, outcome: Any, scores: dict[str, Any]) -> dict[str, Any]:
    stats = outcome.cluster_stats or {}
    return {
        "method": name,
        "loss": cfg.loss.method,
        "cluster_method": cfg.cluster_method,
        "num_clusters": stats.get("num_clusters"),
        "mutual_information_bits": stats.get("mutual_information_bits"),
        "conditional_entropy_bits": stats.get("conditional_entropy_bits"),
        "linear_top1": scores["linear_top1"],
        "linear_top5": scores["linear_top5"],
        "knn_top1": scores["knn_top1"],
        "val_knn_top1": outcome.metrics.get("eval/knn_top1"),
        "epochs": cfg.optim.epochs,
        "seeds": 1,
        "seed": cfg.run.seed,
        "train_seconds": outcome.metrics.get("train_seconds"),
        "checkpoint": str(outcome.checkpoint),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """The demo's table; H(Z|T) shows how much of a cluster is not explained by the label.
    The column heads say which split each accuracy comes from: val (the online kNN, held out
    of the train split) or test (read once, by the final evaluation)."""
    head = (
        f"{'method':<26} {'clusters':>8} {'I(Z;T) bits':>11} {'H(Z|T) bits':>11} "
        f"{'val kNN':>7} {'test linear':>11} {'test kNN':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        bits = [r["mutual_information_bits"], r["conditional_entropy_bits"]]
        shown = ["-" if b is None else f"{b:.2f}" for b in bits]
        val = r.get("val_knn_top1")
        val_shown = "-" if val is None or val != val else f"{val:.3f}"  # nan: no val rows
        lines.append(
            f"{r['method']:<26} {r['num_clusters'] or '-':>8} {shown[0]:>11} {shown[1]:>11} "
            f"{val_shown:>7} {r['linear_top1']:>11.3f} {r['knn_top1']:>8.3f}"
        )
    return "\n".join(lines)


def _prepared_emoji(folder: str) -> Any:
    """The emoji set's manifest; prepared (again) when missing or of an older format."""
    from clinfo_ray.config import PrepareConfig
    from clinfo_ray.data.manifest import read_manifest
    from clinfo_ray.data.write.prepare import prepare

    try:
        return read_manifest(folder)
    except FileNotFoundError:
        print(f"preparing the emoji set into {folder} (npm packages, cached) ...", flush=True)
    except ValueError as err:  # an older format_version
        print(f"{folder}: {err}; preparing it again ...", flush=True)
    prepare(PrepareConfig("emoji", folder, overwrite=True))
    return read_manifest(folder)


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.commands.common import connect_ray, fail
    from clinfo_ray.config import ConfigError

    logging.getLogger().setLevel(logging.WARNING)  # the demo prints its own progress lines
    try:
        base = load_config(args.config, [f"data.dataset_dir={args.data}", *args.overrides])
    except ConfigError as err:
        return fail("demo", err)
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    from clinfo_ray.evaluation.evaluate import evaluate_checkpoint
    from clinfo_ray.training.launch import train

    connect_ray(cpus_needed=base.run.num_workers * base.run.cpus_per_worker)
    manifest = _prepared_emoji(args.data)
    print(f"emoji set: {manifest.rows} rows, {manifest.num_classes} classes", flush=True)
    rows = []
    for name, overrides in METHODS:
        cfg = apply_overrides(
            base, {**overrides, "run.output_dir": str(out), "run.name": overrides["loss.method"]}
        )
        workers = cfg.run.num_workers
        print(f"training {name}: {cfg.optim.epochs} epochs, {workers} workers ...", flush=True)
        started = time.perf_counter()
        outcome = train(cfg)
        outcome.metrics["train_seconds"] = time.perf_counter() - started
        if outcome.checkpoint is None:
            raise RuntimeError(f"{name}: the run reported no checkpoint")
        scores = evaluate_checkpoint(outcome.checkpoint, out_dir=out / cfg.run.name / "eval")
        rows.append(_row(name, cfg, outcome, scores))
        print(f"  done in {outcome.metrics['train_seconds']:.0f} s", flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(format_table(rows))
    print(
        f"\n1 seed (seed {base.run.seed}) per method. val kNN: the last online kNN "
        f"(k={base.eval.knn_k}) of the validation emoji ({base.data.val_fraction:.0%} of train, "
        "never trained on) against the training emoji; test linear / test kNN: the final "
        f"evaluation on the {manifest.rows.get('test', 0)} test emoji, read once. Between seeds "
        "SimCLR alone moved about 5 points in our measurements: compare methods over seeds."
    )
    print(
        "One run per method cannot test the paper's claims: the study over seeds, methods and "
        "the multi-style emoji set is docs/results.md (clinfo-ray study --config study_cpu)."
    )
    print(f"summary: {out / 'summary.json'}")
    print(f"tensorboard --logdir {out}")
    return 0
