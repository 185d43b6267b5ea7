"""Nearest-neighbour picture of embeddings: `clinfo-ray neighbors` as a Ray job.

    ray job submit --working-dir . -- python jobs/neighbors.py --embeddings /mnt/shared/emb \
        --data /mnt/shared/data/emoji4 --out /mnt/shared/neighbors.png

The arguments are those of the command (`clinfo-ray neighbors --help`). Its locations must be
absolute paths where the job's driver runs (a relative one is refused inside a
submitted job).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python jobs/neighbors.py` from a checkout (the --working-dir upload) without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinfo_ray.commands.main import main

if __name__ == "__main__":
    sys.exit(main(["neighbors", *sys.argv[1:]]))
