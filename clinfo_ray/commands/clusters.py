"""``clinfo-ray clusters``: build a cluster assignment table, or print an existing one's stats.

    clinfo-ray clusters --data DIR --method METHOD --out FILE.parquet [options]
    clinfo-ray clusters --config quickstart --out FILE.parquet    # the clusters that run uses
    clinfo-ray clusters --data DIR --method kmeans --checkpoint CKPT --k K --out FILE.parquet
    clinfo-ray clusters --stats-only FILE.parquet --data DIR

Every option is a field of the training config's ``clusters`` section (flags generated from
it; ``--set`` reaches any key), so a table built here is the one a run with the same config
builds: the k-means seed defaults to ``run.seed``. ``kmeans`` first embeds every image with the
checkpoint (L2-normalised projection-head output) in one inference pass over Ray Data (an actor
pool; ``eval.batch_size``, ``eval.num_actors``, ``eval.device``); the metadata methods run here
without Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from clinfo_ray.commands.flags import (
    add_address_argument,
    add_config_arguments,
    add_section_flags,
    flag_overrides,
)
from clinfo_ray.config import ClustersConfig, DataConfig, EvalConfig, TrainConfig, load_or_default

SUMMARY_KEYS = (
    "num_clusters",
    "label_entropy_bits",
    "cluster_entropy_bits",
    "mutual_information_bits",
    "conditional_entropy_bits",
    "cluster_size",
)
_DATA_FLAGS = {"dataset_dir": "data", "label_column": "label-column"}  # --data DIR, ...
_EMBED_FLAGS = ("batch_size", "num_actors")  # of the kmeans method's inference pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE.parquet", help="where to write the table")
    parser.add_argument(
        "--stats-only", metavar="FILE.parquet", help="print the statistics of an existing table"
    )
    parser.add_argument("--checkpoint", metavar="DIR", help="kmeans: the model to embed with")
    add_address_argument(parser)
    add_config_arguments(parser)
    add_section_flags(
        parser,
        DataConfig,
        skip=[f.name for f in dataclasses.fields(DataConfig) if f.name not in _DATA_FLAGS],
        rename=_DATA_FLAGS,
    )
    add_section_flags(parser.add_argument_group("clusters"), ClustersConfig)
    add_section_flags(
        parser.add_argument_group("kmeans: the inference pass"),
        EvalConfig,
        skip=[f.name for f in dataclasses.fields(EvalConfig) if f.name not in _EMBED_FLAGS],
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """defaults < --config file < flags < --set."""
    cfg: TrainConfig = load_or_default(args.config, flag_overrides(args))
    return cfg


def locations(args: argparse.Namespace) -> dict[str, Any]:
    """What it reads and writes (checked inside a submitted job); it writes no run."""
    from clinfo_ray.commands.common import train_locations

    found = train_locations(config_from_args(args), output=False)
    return {
        **found,
        "--out": args.out,
        "--stats-only": args.stats_only,
        "--checkpoint": args.checkpoint,
    }


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.clusters.build import build_clusters, statistics_of_table, stats_path
    from clinfo_ray.clusters.table import ClusterTableError
    from clinfo_ray.commands.common import fail
    from clinfo_ray.config import ConfigError

    try:
        cfg = config_from_args(args)
        _check_uris(cfg, args)
        if args.stats_only:
            record = statistics_of_table(
                args.stats_only, cfg.data.dataset_dir, label_column=cfg.data.label_column
            )
            print(json.dumps(record, indent=2))
            return 0
        if not args.out:
            return fail("clusters", "--out FILE.parquet is required (or --stats-only FILE)")
        clusters = cfg.run_clusters
        embeddings = None
        if clusters.method == "kmeans":
            if not args.checkpoint:
                return fail("clusters", "--method kmeans needs --checkpoint DIR to embed with")
            embeddings = _checkpoint_embeddings(args.checkpoint, cfg, args.address)
        record = build_clusters(
            clusters,
            cfg.data.dataset_dir,
            args.out,
            embeddings,
            label_column=cfg.data.label_column,
        )
    except (ConfigError, ValueError, FileNotFoundError, ClusterTableError) as err:
        return fail("clusters", err)
    except KeyError as err:
        return fail("clusters", err.args[0])
    print(json.dumps({key: record[key] for key in SUMMARY_KEYS}, indent=2))
    print(f"wrote {args.out} and {stats_path(args.out)}")
    return 0


def _check_uris(cfg: TrainConfig, args: argparse.Namespace) -> None:
    """Locations given as URIs (s3://...), before Ray starts: the bucket, credentials and
    endpoint; a dataset's manifest; that the table's folder can be written."""
    from clinfo_ray.data import columns as C
    from clinfo_ray.storage import location as loc
    from clinfo_ray.storage.checks import check_remote

    check_remote("data.dataset_dir", cfg.data.dataset_dir, "folder", C.MANIFEST)
    check_remote("--stats-only", args.stats_only, "file")
    check_remote("--out", loc.parent(args.out) if args.out else None, "output")


def _checkpoint_embeddings(checkpoint: str, cfg: TrainConfig, address: str | None) -> Any:
    """L2-normalised projections of every decodable image of the dataset (all splits). The
    checkpoint and the dataset are checked before Ray starts."""
    import numpy as np

    from clinfo_ray.checkpointing import CheckpointError
    from clinfo_ray.clusters.from_embeddings import Embeddings
    from clinfo_ray.clusters.metadata import parquet_files
    from clinfo_ray.commands.common import connect_ray
    from clinfo_ray.data import columns as C
    from clinfo_ray.evaluation.encoder_source import check_checkpoint
    from clinfo_ray.evaluation.features import extract_split_features

    try:
        check_checkpoint(checkpoint)
    except CheckpointError as err:
        raise ValueError(str(err)) from None
    parquet_files(cfg.data.dataset_dir)  # not a dataset: fail before Ray starts
    connect_ray(address)
    parts = extract_split_features(
        checkpoint,
        cfg.data.dataset_dir,
        C.SPLITS,
        cfg.eval,
        output="projections",
        label_column=cfg.data.label_column,
    )
    ids = np.concatenate([part.ids for part in parts.values()])
    vectors = np.concatenate([part.features for part in parts.values()])  # (n, P)
    return Embeddings(ids, vectors, source=str(checkpoint))
