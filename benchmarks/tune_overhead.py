"""What a Ray Tune search adds to its training runs: the same 4 configs as a 4-trial grid through
the search of ``clinfo-ray tune`` against 4 ``train`` runs one after another, in one process on
one Ray.

    python benchmarks/tune_overhead.py --data data/emoji --epochs 3
    python benchmarks/tune_overhead.py --data data/emoji --epochs 5 --set data.image_size=16 \\
        --key optim.lr --values 0.1,0.2,0.3,0.4

Both sides train the same configs (``--key`` set to each of ``--values``) one at a time with the
same resources: the search runs one trial at a time and stops none (FIFO), both score the
validation split every epoch (the search's ``eval.knn_every 1``), and both train on one cluster
table built before either starts. What is left is what Tune adds per trial: the trial's actor
and its start, the reports, Tune's bookkeeping. Prints the wall times and their ratio (the goal:
the search at most 10 % slower). The sequential runs go first; ``--search-first`` swaps them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from clinfo_ray.commands.common import connect_ray, setup_logging
from clinfo_ray.config import apply_overrides, load_config
from clinfo_ray.training.launch import check_before_ray, train, with_absolute_paths
from clinfo_ray.tuning.report import COMPLETED, collect
from clinfo_ray.tuning.search import SearchSettings, run_search, search_dir
from clinfo_ray.tuning.space import Dimension, SearchSpace
from clinfo_ray.tuning.trial import with_shared_clusters


def _sequential(base: Any, key: str, values: list[Any]) -> float:
    start = time.perf_counter()
    for i, value in enumerate(values):
        cfg = apply_overrides(base, {key: value, "run.name": f"train-{i}", "eval.knn_every": 1})
        train(cfg)
    return time.perf_counter() - start


def _search(base: Any, key: str, values: list[Any]) -> float:
    space = SearchSpace(Path("tune_overhead.yaml"), (Dimension(key, "grid", tuple(values)),))
    settings = SearchSettings(name="tune_overhead", scheduler="fifo")
    start = time.perf_counter()
    grid = run_search(base, space, settings, max_concurrent=1)
    seconds = time.perf_counter() - start
    records = collect(grid, search_dir(base, settings.name), space, base.optim.epochs)
    failed = [r.trial_id for r in records if r.status != COMPLETED]
    if failed:
        raise SystemExit(f"trials did not complete: {failed} ({records})")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--data", default=None, help="data.dataset_dir (default: the config's)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--key", default="loss.temperature", help="the key the 4 configs differ in")
    parser.add_argument("--values", default="0.05,0.1,0.2,0.4", help="comma-separated YAML values")
    parser.add_argument("--out", default=None, help="folder of the runs (default: a new temp dir)")
    parser.add_argument("--search-first", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()

    out = Path(args.out or tempfile.mkdtemp(prefix="tune_overhead-")).resolve()
    sets = [f"optim.epochs={args.epochs}", f"run.output_dir={out}", *args.overrides]
    if args.data:
        sets.append(f"data.dataset_dir={args.data}")
    if load_config(args.config, args.overrides).optim.warmup_epochs >= args.epochs:
        sets.append(f"optim.warmup_epochs={args.epochs - 1}")  # a warm-up shorter than the run
    base = load_config(args.config, sets)
    values = [yaml.safe_load(v) for v in args.values.split(",")]
    for value in values:  # fail before Ray on a bad value
        check_before_ray(apply_overrides(base, {args.key: value}))
    connect_ray(None, cpus_needed=base.run.num_workers * base.run.cpus_per_worker)
    base = with_shared_clusters(with_absolute_paths(base), out / "clusters")  # for both sides

    if args.search_first:
        searched = _search(base, args.key, values)
        sequential = _sequential(base, args.key, values)
    else:
        sequential = _sequential(base, args.key, values)
        searched = _search(base, args.key, values)
    n = len(values)
    result = {
        "runs": n,
        "epochs": args.epochs,
        "config": args.config,
        "key": args.key,
        "values": values,
        "train_sequential_s": round(sequential, 1),
        "tune_search_s": round(searched, 1),
        "per_run_train_s": round(sequential / n, 1),
        "per_trial_tune_s": round(searched / n, 1),
        "ratio": round(searched / sequential, 3),
        "goal": "ratio <= 1.10",
        "out": str(out),
    }
    print(f"{n} x train, one after another: {sequential:7.1f} s ({sequential / n:.1f} s a run)")
    print(f"{n}-trial grid through Tune:     {searched:7.1f} s ({searched / n:.1f} s a trial)")
    print(f"ratio: {searched / sequential:.3f} (goal <= 1.10)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
