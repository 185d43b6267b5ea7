"""`clinfo-ray clusters`: build a cluster assignment table, or print an existing one's stats.

clinfo-ray clusters --data DIR --method METHOD --out FILE.parquet [options]
clinfo-ray clusters --stats-only FILE.parquet --data DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from typing import Any

from clinfo_ray.config import ClustersConfig, ConfigError
from clinfo_ray.config.sections import ClusterMethod

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
    parser.add_argument(
        "--column", default=defaults.hierarchy_column, help="hierarchy: the column to cluster by"
    )


def config_from_args(args: argparse.Namespace) -> ClustersConfig:
    return ClustersConfig(
        method=args.method,
        k=args.k,
        top_k=args.top_k,
        tag_ranking=args.rank_by,
        hierarchy_column=args.column,
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
        if args.method == "kmeans":
            # --checkpoint: embeddings from the training stage's inference pass, then kmeans()
            return _fail("--method kmeans needs the training stage's inference pass: not built yet")
        config = config_from_args(args)
        record = build_clusters(
            config, args.data, args.out, BuildOptions(**options_from_args(args))
        )
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
