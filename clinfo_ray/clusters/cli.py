"""`clinfo-ray clusters`: build a cluster assignment table, or print an existing one's stats.

clinfo-ray clusters --data DIR --method METHOD --out FILE.parquet [options]
clinfo-ray clusters --data DIR --method kmeans --checkpoint CKPT --k K --out FILE.parquet
clinfo-ray clusters --stats-only FILE.parquet --data DIR

`kmeans` first embeds every image of the dataset with the checkpoint (L2-normalised projection-
head output) in an inference pass over Ray Data: an actor pool, on GPUs when the Ray cluster has
them (clinfo_ray.evaluation.features). That pass is the one place this command touches Ray or
torch, and the reason it imports from evaluation: the clustering itself (build.py) takes plain
arrays. It attaches to a running Ray (RAY_ADDRESS under `ray job submit`) or starts a local one.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from typing import TYPE_CHECKING, Any

from clinfo_ray.config import ClustersConfig, ConfigError
from clinfo_ray.config.sections import ClusterMethod

if TYPE_CHECKING:
    from .from_embeddings import Embeddings

METHODS = typing.get_args(ClusterMethod)
INIT_CHOICES = ("afk-mc2", "random", "k-means++")  # build.INIT_CHOICES, without its imports
SUMMARY_KEYS = (
    "num_clusters",
    "label_entropy_bits",
    "cluster_entropy_bits",
    "mutual_information_bits",
    "conditional_entropy_bits",
    "cluster_size",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ClustersConfig()
    parser.add_argument("--data", required=True, metavar="DIR", help="a prepared dataset folder")
    parser.add_argument("--method", choices=METHODS, help="how clusters are made")
    parser.add_argument("--out", metavar="FILE.parquet", help="where to write the table")
    parser.add_argument(
        "--stats-only", metavar="FILE.parquet", help="print the statistics of an existing table"
    )
    tags = parser.add_argument_group("tags / tags-kmeans")
    tags.add_argument("--top-k", type=int, default=defaults.top_k, help="tags: k binary tags")
    tags.add_argument(
        "--rank-by",
        choices=("entropy", "frequency"),
        default=defaults.tag_ranking,
        help="tags: how tags are ranked",
    )
    for name, what in (("include", "only these tags"), ("exclude", "never these tags")):
        tags.add_argument(
            f"--tags-{name}",
            type=_comma_list,
            action="extend",
            default=[],
            metavar="T1,T2",
            help=f"{what} (comma-separated, repeatable)",
        )
    km = parser.add_argument_group("k-means (tags-kmeans, kmeans)")
    km.add_argument("--k", type=int, default=defaults.k, help="number of clusters")
    km.add_argument("--niter", type=int, default=defaults.niter, help="k-means iterations")
    km.add_argument("--nredo", type=int, default=defaults.nredo, help="restarts, best kept")
    km.add_argument("--seed", type=int, default=0, help="k-means seed")
    km.add_argument("--init", choices=INIT_CHOICES, default="afk-mc2", help="centroid seeding")
    km.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto", help="faiss on GPU")
    km.add_argument("--checkpoint", metavar="DIR", help="kmeans: the checkpoint to embed with")
    km.add_argument("--batch-size", type=int, default=256, help="kmeans: images per encoder call")
    km.add_argument(
        "--num-actors", type=int, help="kmeans: encoder actors (default: from the Ray cluster)"
    )
    parser.add_argument(
        "--level",
        type=int,
        default=defaults.hierarchy_level,
        help="hierarchy: how many ancestors, coarse to fine, make a cluster (1 = the coarsest)",
    )


def config_from_args(args: argparse.Namespace) -> ClustersConfig:
    return ClustersConfig(
        method=args.method,
        k=args.k,
        top_k=args.top_k,
        tag_ranking=args.rank_by,
        hierarchy_level=args.level,
        niter=args.niter,
        nredo=args.nredo,
    )


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """BuildOptions' fields (a dict: building the dataclass needs the heavy build module)."""
    return {
        "tags_include": tuple(args.tags_include),
        "tags_exclude": tuple(args.tags_exclude),
        "seed": args.seed,
        "init": args.init,
        "use_gpu": args.gpu,
    }


def checkpoint_embeddings(
    checkpoint: str, data_dir: str, *, batch_size: int = 256, num_actors: int | None = None
) -> Embeddings:
    """L2-normalised projections of every decodable image of the dataset (all splits), from one
    inference pass over Ray Data. The checkpoint is checked before Ray starts."""
    import numpy as np
    import ray

    from clinfo_ray.data import columns as C
    from clinfo_ray.evaluation.features import check_checkpoint, extract_split_features

    from .from_embeddings import Embeddings
    from .metadata import parquet_files

    check_checkpoint(checkpoint)
    parquet_files(data_dir)  # not a dataset: fail before Ray starts
    if not ray.is_initialized():
        ray.init(configure_logging=False)
    parts = extract_split_features(
        checkpoint,
        data_dir,
        C.SPLITS,
        batch_size=batch_size,
        use_gpu=ray.cluster_resources().get("GPU", 0) >= 1,
        num_actors=num_actors,
        output="projections",
    )
    ids = np.concatenate([part.ids for part in parts.values()])
    vectors = np.concatenate([part.features for part in parts.values()])  # (n, P)
    return Embeddings(ids, vectors, source=str(checkpoint))


def run(args: argparse.Namespace) -> int:
    from .build import BuildOptions, build_clusters, statistics_of_table, stats_path
    from .table import ClusterTableError

    try:
        if args.stats_only:
            record = statistics_of_table(args.stats_only, args.data)
            print(json.dumps(record, indent=2))
            return 0
        if not args.method or not args.out:
            return _fail("--method and --out are required (or --stats-only FILE.parquet)")
        config = config_from_args(args)
        options = BuildOptions(**options_from_args(args))
        embeddings = None
        if args.method == "kmeans":
            if not args.checkpoint:
                return _fail("--method kmeans needs --checkpoint DIR (the model to embed with)")
            from clinfo_ray.checkpointing import CheckpointError  # torch: only for kmeans

            try:
                embeddings = checkpoint_embeddings(
                    args.checkpoint,
                    args.data,
                    batch_size=args.batch_size,
                    num_actors=args.num_actors,
                )
            except CheckpointError as err:
                return _fail(str(err))
        record = build_clusters(config, args.data, args.out, options, embeddings)
    except (ConfigError, ValueError, FileNotFoundError, ClusterTableError) as err:
        return _fail(str(err))
    except KeyError as err:
        return _fail(str(err.args[0]))
    print(json.dumps({key: record[key] for key in SUMMARY_KEYS}, indent=2))
    print(f"wrote {args.out} and {stats_path(args.out)}")
    return 0


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _fail(message: str) -> int:
    print(f"clinfo-ray clusters: error: {message}", file=sys.stderr)
    return 2
