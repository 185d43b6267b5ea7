"""Evaluate a checkpoint: ``python jobs/eval.py --checkpoint runs/x/checkpoint_000059``.

Linear probe and weighted kNN top-1 of the frozen encoder features, printed as JSON and
written to ``<checkpoint>/../eval`` (or ``--out``) with TensorBoard scalars. On a cluster:
``ray job submit --working-dir . -- python jobs/eval.py --checkpoint PATH --data DIR``
(the paths must be readable on every node). Without one it starts a local Ray.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under --working-dir

from clinfo_ray.evaluation import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/eval.py", description=__doc__.splitlines()[0])
    cli.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    # run() checks the checkpoint and the --set overrides, then ray.init(): it attaches to the
    # cluster under `ray job submit` (RAY_ADDRESS) and starts a local Ray otherwise.
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
