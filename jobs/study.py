"""Reproduce the paper's claims: `clinfo-ray study` as a Ray job.

    ray job submit --working-dir . -- python jobs/study.py --config study_gpu \
        --set data.dataset_dir=/mnt/shared/data/emoji4 --set run.output_dir=/mnt/shared/runs

The arguments are those of the command (`clinfo-ray study --help`). Under `ray job submit` it joins
the job's cluster (RAY_ADDRESS); run directly, it starts a local Ray. Its locations must be
absolute paths every node sees (shared storage on a cluster; a relative one is refused inside a
submitted job): the trials' runs, the shared cluster tables and the results are written under
run.output_dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python jobs/study.py` from a checkout (the --working-dir upload) without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinfo_ray.commands.main import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
