"""Export a checkpoint's encoder: `clinfo-ray export` as a Ray job.

    ray job submit --working-dir . -- python jobs/export.py \
        --checkpoint /mnt/shared/runs/x/checkpoint_epoch0030 --out /mnt/shared/exports/x

The arguments are those of the command (`clinfo-ray export --help`). It starts no Ray of its
own; under `ray job submit` it runs on the head node, so the paths are the head's, and
absolute (a relative one is refused inside a submitted job).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python jobs/export.py` from a checkout (the --working-dir upload) without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinfo_ray.commands.main import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
