"""Prepare a dataset as Parquet shards on a Ray cluster: ``ray job submit -- python jobs/prepare.py
SOURCE --out DIR [options]`` (the options of ``clinfo-ray prepare``).

Attaches to the cluster the job runs on (``ray.init()``); run directly, it starts a local Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from clinfo_ray.data.prepare_cli import add_arguments, config_from_args, summary_line


def main(argv: list[str] | None = None) -> int:
    import ray

    from clinfo_ray.data.prepare import prepare
    from clinfo_ray.data.sources.source_table import PrepareError

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    # Inside `ray job submit` RAY_ADDRESS names the cluster; otherwise start our own.
    address = os.environ.get("RAY_ADDRESS", "local")
    ray.init(address=address, num_cpus=args.num_cpus if address == "local" else None)
    try:
        manifest = prepare(config_from_args(args))
    except PrepareError as err:
        print(f"prepare: {err}", file=sys.stderr)
        return 2
    print(summary_line(manifest, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
