"""``make demo``: two trials of the study ``study_cpu``, end to end, one seed each.

Cl-InfoNCE on tag clusters (faiss k-means of TF-IDF bags of hashtags, K = 100) against SimCLR,
with the study's setting (the multi-style emoji set, the small CNN, the budget its setting
search chose on validation; ``--epochs`` shortens the schedule for a quicker look): prepares the
dataset when missing (npm packages, cached), trains
both on a local Ray with 2 Train workers, evaluates each once as the study does (the linear
probe's setting chosen by cross-validation on the fitting rows, then the validation and the test
split scored once each; kNN beside it), and prints a table;
the same rows go to ``runs/demo/summary.json``. Then it embeds the train and test splits with
each method's checkpoint (what ``clinfo-ray embed`` does, into ``runs/demo/embeddings/METHOD``)
and draws the nearest training images of the same test images for both methods side by side
(what ``clinfo-ray neighbors`` does), framed by the downstream label; the picture's path is the
last line it prints. Running it again resumes or reuses finished runs of the same names
(``--fresh`` starts over). ``clinfo-ray demo`` (what ``make demo`` runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clinfo_ray.config import TrainConfig
    from clinfo_ray.study.spec import Study

    Trained = list[tuple[str, TrainConfig, Path]]  # (method, its trial config, last checkpoint)

DEMO_STUDY = "study_cpu"  # clinfo_ray/configs/studies/study_cpu.yaml
DEMO_METHODS = ("tfidf-k100", "simclr")  # two of its methods: the same budget, other clusters
SCORES = ("val_linear_top1", "val_knn_top1", "test_linear_top1", "test_knn_top1")
# The neighbours picture: the same test queries for every method, drawn with a fixed seed.
NEIGHBOR_QUERIES, NEIGHBOR_K, NEIGHBOR_SEED = 8, 5, 0
PICTURE = "neighbors.png"  # under --out
LOSS_NAMES = {"clinfonce": "Cl-InfoNCE", "simclr": "SimCLR"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", default=DEMO_STUDY, help="the study whose trials to run")
    parser.add_argument(
        "--methods",
        default=",".join(DEMO_METHODS),
        help="comma-separated methods of the study (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="run.seed of both (default: 0)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of each run, the warm-up scaled by the same factor (default: the study's, "
        "22 for study_cpu); runs of another schedule are named METHOD-eN",
    )
    parser.add_argument("--out", default="runs/demo", help="runs, summary.json, TensorBoard")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fresh", action="store_true", help="delete earlier demo runs first")


def summary_row(
    method: str, about: str, cfg: Any, clusters: dict | None, scores: dict, seconds: float
) -> dict[str, Any]:
    """One method's row of summary.json: what it trained on, and its scores (study's split
    names: val is held out of the train split, test is read once)."""
    clusters = clusters or {}
    return {
        "method": method,
        "about": about,
        "loss": cfg.loss.method,
        "cluster_method": cfg.cluster_method,
        "num_clusters": clusters.get("num_clusters"),
        "mutual_information_bits": clusters.get("mutual_information_bits"),
        "conditional_entropy_bits": clusters.get("conditional_entropy_bits"),
        "val_linear_top1": scores["val"]["linear_top1"],
        "val_knn_top1": scores["val"]["knn_top1"],
        "test_linear_top1": scores["test"]["linear_top1"],
        "test_knn_top1": scores["test"]["knn_top1"],
        "probe_weight_decay": scores["probe"]["weight_decay"],
        "epochs": cfg.optim.epochs,
        "seed": cfg.run.seed,
        "train_seconds": seconds,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """The demo's table; H(Z|T) shows how much of a cluster is not explained by the label. The
    column heads say which split each accuracy comes from."""
    head = (
        f"{'method':<12} {'clusters':>8} {'I(Z;T) bits':>11} {'H(Z|T) bits':>11} "
        f"{'val linear':>10} {'val kNN':>7} {'test linear':>11} {'test kNN':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        bits = [r["mutual_information_bits"], r["conditional_entropy_bits"]]
        shown = ["-" if b is None else f"{b:.2f}" for b in bits]
        clusters = "-" if r["num_clusters"] is None else f"{r['num_clusters']:.0f}"
        scores = [f"{r[k]:.3f}" for k in SCORES]
        lines.append(
            f"{r['method']:<12} {clusters:>8} {shown[0]:>11} {shown[1]:>11} "
            f"{scores[0]:>10} {scores[1]:>7} {scores[2]:>11} {scores[3]:>8}"
        )
    return "\n".join(lines)


def demo_schedule(cfg: TrainConfig, epochs: int | None) -> dict[str, Any]:
    """The overrides that give ``cfg`` ``epochs`` epochs (None: its own), its learning-rate
    warm-up scaled by the same factor (below the new count, as the config requires)."""
    if epochs is None or epochs == cfg.optim.epochs:
        return {}
    warmup = cfg.optim.warmup_epochs * epochs / cfg.optim.epochs
    return {"optim.epochs": epochs, "optim.warmup_epochs": min(warmup, epochs - 1.0)}


def train_and_evaluate(
    study: Study, methods: list[str], seed: int, out: Path, epochs: int | None = None
) -> tuple[list[dict[str, Any]], Trained]:
    """Train and evaluate each method of ``study`` at ``seed`` into ``out/METHOD`` (``epochs``
    epochs, None: the study's), printing progress: the summary rows, and each method's (name,
    config, last checkpoint)."""
    from clinfo_ray.config import apply_overrides
    from clinfo_ray.study.evaluate import cluster_information, evaluate_trial
    from clinfo_ray.training.launch import train

    rows: list[dict[str, Any]] = []
    trained: Trained = []
    for method in methods:
        trial = study.trial_config(method, seed)
        schedule = demo_schedule(trial, epochs)
        # another schedule, another run: a rerun never reuses a run trained for other epochs
        name = f"{method}-e{epochs}" if schedule else method
        cfg = apply_overrides(trial, {**schedule, "run.output_dir": str(out), "run.name": name})
        workers = cfg.run.num_workers
        print(f"training {method}: {cfg.optim.epochs} epochs, {workers} workers ...", flush=True)
        started = time.perf_counter()
        outcome = train(cfg)
        seconds = time.perf_counter() - started
        if outcome.checkpoint is None:
            raise RuntimeError(f"{method}: the run reported no checkpoint")
        scores = evaluate_trial(cfg, outcome.checkpoint, study.probe, evaluate_test=True)
        clusters = cluster_information(outcome.run_dir, outcome.cluster_stats)
        rows.append(summary_row(method, study.method(method).about, cfg, clusters, scores, seconds))
        trained.append((method, cfg, outcome.checkpoint))
        print(f"  done in {seconds:.0f} s", flush=True)
    return rows, trained


def picture_name(method: str, loss: str) -> str:
    """A method's name on the picture: its loss, and the study's name for it when that adds
    something (``Cl-InfoNCE (tfidf-k100)``, ``SimCLR``)."""
    shown = LOSS_NAMES.get(loss, loss)
    return shown if shown.lower() == method.lower() else f"{shown} ({method})"


def neighbors_picture(trained: Trained, out: Path) -> dict[str, float]:
    """Embed the train and test splits with each (method, config, checkpoint) as ``clinfo-ray
    embed`` does (Parquet in ``out/embeddings/METHOD``, an earlier demo's replaced), then draw
    the same test queries' nearest training images for every method side by side as
    ``clinfo-ray neighbors`` does, into ``out/neighbors.png``, frames by the configs' downstream
    label. Returns each method's share of neighbours with the query's label. Needs Ray."""
    from clinfo_ray.data import columns as C
    from clinfo_ray.evaluation.embed import DatasetImages
    from clinfo_ray.evaluation.embed_output import write_embeddings
    from clinfo_ray.evaluation.encoder_source import CheckpointEncoder
    from clinfo_ray.evaluation.neighbors import draw_neighbors, read_embeddings

    sets = []
    for method, cfg, checkpoint in trained:
        folder, splits = out / "embeddings" / method, [C.TRAIN, C.TEST]
        data = str(Path(cfg.data.dataset_dir).resolve())
        command = ["clinfo-ray", "embed", "--checkpoint", str(checkpoint), "--data", data]
        command += ["--splits", ",".join(splits), "--out", str(folder), "--overwrite"]
        write_embeddings(
            DatasetImages.checked(data, splits, cfg.data.label_column),
            CheckpointEncoder.checked(checkpoint),
            cfg.eval,  # the checkpoint's eval section, as embed's defaults
            str(folder),
            command=shlex.join(command),
            overwrite=True,
        )
        sets.append(read_embeddings(folder, picture_name(method, cfg.loss.method)))
    first = trained[0][1]
    return draw_neighbors(
        sets,
        first.data.dataset_dir,
        out / PICTURE,
        queries=NEIGHBOR_QUERIES,
        k=NEIGHBOR_K,
        seed=NEIGHBOR_SEED,
        label_column=first.data.label_column,
    )


def neighbors_lines(agreement: dict[str, float], label: str, seed: int, picture: Path) -> str:
    """What the demo prints last: how the picture was drawn, each method's share of green
    frames, and the picture's path (the last line)."""
    lines = [
        f"\nnearest neighbours: {NEIGHBOR_QUERIES} test images (drawn with seed {NEIGHBOR_SEED}), "
        f"each with its {NEIGHBOR_K} nearest training images by cosine similarity, for each "
        f"method's seed-{seed} checkpoint; a green frame: the same {label} as the query"
    ]
    lines += [
        f"  {name}: {share:.3f} of the neighbours are green" for name, share in agreement.items()
    ]
    lines.append(f"neighbours picture: {picture}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.commands.common import connect_ray, fail
    from clinfo_ray.config import ConfigError, parse_set_overrides
    from clinfo_ray.data.write.sources.source_table import PrepareError
    from clinfo_ray.study.run import dataset_to_prepare, ensure_dataset
    from clinfo_ray.study.study_file import load_study

    logging.getLogger().setLevel(logging.WARNING)  # the demo prints its own progress lines
    try:
        study = load_study(args.study, parse_set_overrides(args.overrides))
        methods = [m for m in args.methods.split(",") if m]
        unknown = [m for m in methods if m not in {x.name for x in study.methods}]
        if unknown or not methods:
            known = ", ".join(m.name for m in study.methods)
            raise ConfigError(f"--methods: {unknown or methods} not in {study.name} ({known})")
        if args.epochs is not None and args.epochs < 1:
            raise ConfigError(f"--epochs: {args.epochs} is not >= 1")
        source = dataset_to_prepare(study)  # no npm, no network: fails here, before Ray
    except (ConfigError, PrepareError) as err:
        return fail("demo", err)
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    base = study.base
    connect_ray(cpus_needed=base.run.num_workers * base.run.cpus_per_worker)
    manifest = ensure_dataset(study, source)
    coarse = base.data.label_column == "coarse_label"
    classes = len(manifest.coarse_class_names if coarse else manifest.class_names)
    print(
        f"{base.data.dataset_dir}: {manifest.rows} rows, {classes} classes of "
        f"{base.data.label_column} (the setting of {study.name})",
        flush=True,
    )
    rows, trained = train_and_evaluate(study, methods, args.seed, out, args.epochs)
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("embedding train and test with each checkpoint, drawing their neighbours ...", flush=True)
    started = time.perf_counter()
    agreement = neighbors_picture(trained, out)
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    print()
    print(format_table(rows))
    shortened = ""  # said only when --epochs changed the study's schedule
    if rows[0]["epochs"] != base.optim.epochs:
        shortened = f", {rows[0]['epochs']} epochs (the study trains {base.optim.epochs})"
    print(
        f"\n1 seed (seed {args.seed}) per method{shortened}, evaluated as {study.name} evaluates "
        "a trial: the linear probe's weight decay and epochs chosen by cross-validation on the "
        "training emoji, then that one probe scores the validation emoji (held out of the train "
        "split, never trained on) and the test emoji once each; kNN beside it. One "
        "run per method cannot test the paper's claims: the study over seeds and methods is "
        f"docs/results.md (clinfo-ray study --config {study.name})."
    )
    print(f"summary: {out / 'summary.json'}")
    print(f"tensorboard --logdir {out}")
    print(neighbors_lines(agreement, trained[0][1].data.label_column, args.seed, out / PICTURE))
    return 0
