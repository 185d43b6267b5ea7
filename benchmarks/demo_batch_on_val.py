"""The demo's global batch, chosen again on the validation split (issue 9, item 6).

The quickstart's global batch of 128 was chosen in docs/demo_study.md from test-split scores.
This re-runs that choice the honest way: Cl-InfoNCE (tags-kmeans) and SimCLR at a global batch
of 128 and 256, over seeds, scored only by the online kNN top-1 on the validation split (10 % of
the train emoji, never trained on). The test split is not read.

Each finished run appends one JSON line to ``--out`` (raw results, committed as they come); a run
already in that file is skipped, and an interrupted run resumes from its checkpoint (same
``run.name``), so the study can be stopped and started again.

    python benchmarks/demo_batch_on_val.py --data data/emoji --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from clinfo_ray.config import apply_overrides, load_config

# The quickstart demo of that time (the demo now runs two trials of study_cpu): its config and its
# two methods, the same budget with only the clusters differing.
DEMO_CONFIG = "quickstart"
METHODS = [
    ("Cl-InfoNCE (tags-kmeans)", {"loss.method": "clinfonce", "clusters.method": "tags-kmeans"}),
    ("SimCLR", {"loss.method": "simclr"}),
]
BATCHES = {128: 64, 256: 128}  # global batch -> batch_size_per_worker over 2 workers


def _done(out: Path) -> set[str]:
    if not out.is_file():
        return set()
    return {json.loads(line)["run"] for line in out.read_text().splitlines() if line.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/emoji")
    parser.add_argument("--runs", default="runs/demo_batch_on_val")
    parser.add_argument("--out", default="docs/demo_batch_on_val.jsonl")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from clinfo_ray.commands.common import connect_ray
    from clinfo_ray.training.launch import train

    base = load_config(DEMO_CONFIG, [f"data.dataset_dir={args.data}"])
    connect_ray(cpus_needed=base.run.num_workers * base.run.cpus_per_worker)
    out = Path(args.out)
    for seed in args.seeds:
        for global_batch, per_worker in BATCHES.items():
            for name, overrides in METHODS:
                run = f"{overrides['loss.method']}_b{global_batch}_s{seed}"
                if run in _done(out):
                    continue
                cfg = apply_overrides(
                    base,
                    {
                        **overrides,
                        "data.batch_size_per_worker": per_worker,
                        "run.seed": seed,
                        "run.name": run,
                        "run.output_dir": args.runs,
                    },
                )
                started = time.perf_counter()
                outcome = train(cfg)
                record = {
                    "run": run,
                    "method": name,
                    "global_batch": global_batch,
                    "seed": seed,
                    "val_knn_top1": outcome.metrics.get("eval/knn_top1"),
                    "train_loss": outcome.metrics.get("train/loss"),
                    "epochs": cfg.optim.epochs,
                    "seconds": time.perf_counter() - started,
                }
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
