"""Prepare a dataset as Parquet shards: `clinfo-ray prepare` as a Ray job.

    ray job submit --working-dir . -- python jobs/prepare.py emoji \
        --out /mnt/shared/data/emoji --cache /mnt/shared/cache/clinfo-ray

The arguments are those of the command (`clinfo-ray prepare --help`). Under `ray job submit` it
joins the job's cluster (RAY_ADDRESS); run directly, it starts a local Ray. Its locations must be
absolute paths every node sees (shared storage on a cluster; a relative one is refused
inside a submitted job).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python jobs/prepare.py` from a checkout (the --working-dir upload) without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinfo_ray.commands.main import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
