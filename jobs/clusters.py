"""Build a cluster assignment table: the `ray job submit` entrypoint of `clinfo-ray clusters`.

    ray job submit --working-dir . -- python jobs/clusters.py \
        --data data/emoji --method tags-kmeans --k 100 --out clusters/emoji_k100.parquet
    ray job submit --working-dir . -- python jobs/clusters.py --data data/emoji \
        --method kmeans --checkpoint runs/x/checkpoint_000059 --k 2500 --out clusters/km.parquet

The metadata methods (tags, tags-kmeans, hierarchy, labels, instance) run in this process with
faiss and pyarrow, without Ray. `kmeans` embeds the dataset with the checkpoint over the Ray
cluster (an actor pool, one GPU each when the cluster has GPUs; the checkpoint and the dataset
must be readable on every node), then runs faiss k-means here. run() checks the checkpoint
before ray.init(), which attaches to the cluster under `ray job submit` (RAY_ADDRESS) and starts
a local Ray otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# `python jobs/clusters.py` from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinfo_ray.clusters import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/clusters.py", description=__doc__.splitlines()[0])
    cli.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its probing of CPU builds
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
