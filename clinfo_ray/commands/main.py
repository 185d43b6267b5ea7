"""The ``clinfo-ray`` console script: one subcommand per stage.

Each subcommand is a module of this package defining ``add_arguments(parser)`` and
``run(args) -> int``; it imports heavy packages (torch, ray) only inside ``run``. The jobs of
``jobs/`` call :func:`main` with their subcommand's name, so a job and a command are one thing.
A command with a job also defines ``locations(args)``: the data and run locations it reads and
writes, which inside a submitted job must be absolute paths or URIs (checked here, before Ray).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from clinfo_ray.commands.common import check_job_locations, fail, setup_logging, submitted_job

# subcommand -> one-line help; the module is clinfo_ray.commands.<name>
COMMANDS: dict[str, str] = {
    "prepare": "turn a dataset into clinfo-ray Parquet shards",
    "clusters": "build a cluster assignment table (or print a table's statistics)",
    "train": "train a representation on Ray Train",
    "tune": "search training hyperparameters with Ray Tune (ASHA on the validation kNN)",
    "study": "train and evaluate every (method, seed) of a study; its statistics and page",
    "eval": "linear probe and kNN of a checkpoint's frozen features",
    "embed": "embed a dataset's splits or a folder of images with a frozen encoder, as Parquet",
    "neighbors": "a picture of test images' nearest training images under one or more embeddings",
    "export": "a checkpoint's encoder as safetensors, a torch.export program, preprocess.json",
    "demo": "Cl-InfoNCE on tag clusters against SimCLR on the emoji set, end to end",
}


def _module(name: str) -> Any:
    return importlib.import_module(f"clinfo_ray.commands.{name}")


def build_parser(prog: str = "clinfo-ray") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        _module(name).add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    module = _module(args.command)
    if submitted_job() is not None and hasattr(module, "locations"):
        from clinfo_ray.config import ConfigError

        try:  # a relative location would name Ray's temporary copy of the upload
            check_job_locations(module.locations(args))
        except ConfigError as err:
            return fail(args.command, err)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
