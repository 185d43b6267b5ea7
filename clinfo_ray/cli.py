"""The ``clinfo-ray`` console script: one subcommand per stage.

Each subcommand lives in the module of its stage, which defines ``add_arguments(parser)`` and
``run(args) -> int`` and imports heavy packages (torch, ray) only inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("clinfo_ray.data.prepare_cli", "turn a dataset into clinfo-ray Parquet shards"),
    "clusters": ("clinfo_ray.clusters.cli", "build a cluster assignment table"),
    "train": ("clinfo_ray.training.cli", "train a representation on Ray Train"),
    "eval": ("clinfo_ray.evaluation.cli", "linear probe and kNN of a checkpoint"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinfo-ray", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name):
                raise
            sub.add_parser(name, help=f"{help_text} (not built yet)")
            continue
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing, at INFO
    module_name = COMMANDS[args.command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not module_name.startswith(err.name):
            raise
        print(f"clinfo-ray {args.command}: not built yet", file=sys.stderr)
        return 2
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
