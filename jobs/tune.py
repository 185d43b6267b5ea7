"""Search training hyperparameters: `clinfo-ray tune` as a Ray job.

    ray job submit --working-dir . -- python jobs/tune.py --space clusters_temperature \
        --config quickstart \
        --set data.dataset_dir=/mnt/shared/data/emoji --set run.output_dir=/mnt/shared/runs

The arguments are those of the command (`clinfo-ray tune --help`). Under `ray job submit` it joins
the job's cluster (RAY_ADDRESS); run directly, it starts a local Ray. Its locations must be
absolute paths every node sees (shared storage on a cluster; a relative one is refused inside a
submitted job): the trials' runs and the shared cluster tables are written under run.output_dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python jobs/tune.py` from a checkout (the --working-dir upload) without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinfo_ray.commands.main import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
