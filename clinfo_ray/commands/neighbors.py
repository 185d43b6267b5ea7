"""``clinfo-ray neighbors --embeddings OUT [--embeddings OUT2 ...] --data DATASET --out grid.png``:
the nearest training images of N test images, one picture, several embeddings side by side.

Each ``--embeddings`` folder is what ``clinfo-ray embed`` wrote for the dataset (Parquet shards
with ``id`` and ``embedding``); its name on the picture is the folder's, or ``--name``. Every
neighbour is framed green when its label matches the query's, red when not; the share of green
frames is printed per embedding set. The same arguments give the same picture, byte for byte.
Each location may be a local path or a URI (s3://...). No Ray: faiss on this machine (a GPU
when faiss sees one).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embeddings",
        action="append",
        required=True,
        metavar="OUT",
        help="a folder written by clinfo-ray embed (repeat to compare methods)",
    )
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="the picture's name for each --embeddings, in order (default: the folder's name)",
    )
    parser.add_argument("--data", required=True, metavar="DATASET", help="the prepared dataset")
    parser.add_argument("--out", required=True, metavar="PNG", help="the picture to write")
    parser.add_argument("--queries", type=int, default=8, metavar="N", help="test images (8)")
    parser.add_argument("--k", type=int, default=5, metavar="K", help="neighbours each (5)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="draws the queries (0)")
    parser.add_argument(
        "--label-column",
        default="label",
        choices=("label", "coarse_label"),
        help="the label the frames compare (default: label)",
    )


def locations(args: argparse.Namespace) -> dict[str, Any]:
    """What it reads and writes (checked inside a submitted job)."""
    return {"--embeddings": args.embeddings, "--data": args.data, "--out": args.out}


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.commands.common import fail
    from clinfo_ray.data.columns import MANIFEST
    from clinfo_ray.evaluation.neighbors import NeighborsError, draw_neighbors, read_embeddings
    from clinfo_ray.storage.checks import LocationError, check_remote

    if args.name and len(args.name) != len(args.embeddings):
        return fail(
            "neighbors",
            f"--name given {len(args.name)} times for {len(args.embeddings)} --embeddings",
        )
    if args.queries < 1 or args.k < 1:
        return fail("neighbors", f"--queries and --k must be >= 1; got {args.queries}, {args.k}")
    names = args.name or [None] * len(args.embeddings)
    try:
        # URIs (s3://...) first: bucket, credentials, endpoint, access
        for folder in args.embeddings:
            check_remote("--embeddings", folder, "folder")
        check_remote("--data", args.data, "folder", MANIFEST)
        check_remote("--out", args.out, "output")
        sets = [
            read_embeddings(folder, name)
            for folder, name in zip(args.embeddings, names, strict=True)
        ]
        if len({s.name for s in sets}) != len(sets):
            return fail("neighbors", "two --embeddings have the same name: give --name for each")
        agreement = draw_neighbors(
            sets,
            args.data,
            args.out,
            queries=args.queries,
            k=args.k,
            seed=args.seed,
            label_column=args.label_column,
        )
    except (NeighborsError, LocationError) as err:
        return fail("neighbors", err)
    for name, share in agreement.items():
        print(f"{name}: {share:.3f} of the neighbours share the query's label")
    print(f"picture: {args.out}")
    return 0
