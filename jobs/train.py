"""Train a representation: ``python jobs/train.py --config configs/quickstart.yaml``.

On a cluster: ``ray job submit --working-dir . -- python jobs/train.py --config ...``.
Without one it starts a local Ray. A bad config fails before Ray starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, under --working-dir

from clinfo_ray.training import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing, at INFO
    return cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
