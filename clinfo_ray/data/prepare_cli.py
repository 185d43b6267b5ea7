"""``clinfo-ray prepare SOURCE --out DIR``: write a dataset as Parquet shards + manifest.json.

Exit status 0 when the dataset was written (possibly with skipped images, which the manifest
lists), 2 with a one-line reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from clinfo_ray.data.prepare import SOURCES, PrepareConfig
from clinfo_ray.data.shard_writer import DEFAULT_SHARD_SIZE
from clinfo_ray.data.sources.source_table import PrepareError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(PrepareConfig)}
    parser.add_argument("source", choices=SOURCES, help="what to prepare")
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument(
        "--images", help="image folder (imagefolder), dataset root (cub200, ut-zappos50k, *mnist)"
    )
    parser.add_argument("--annotations", help="imagefolder: CSV path,tags,label or JSON Lines")
    parser.add_argument(
        "--styles", default="google", help="emoji: renderings, e.g. google,apple,twitter,facebook"
    )
    parser.add_argument("--test-style", help="emoji: this style is the test split")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="hash split fraction")
    parser.add_argument(
        "--cache", help="npm download cache (default $CLINFO_RAY_CACHE or ~/.cache)"
    )
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="rows a file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--seed",
        "--shuffle-seed",
        type=int,
        default=defaults["seed"],
        help="seed of the random order the rows are written in (not of the split)",
    )
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    return PrepareConfig(
        source=args.source,
        out=args.out,
        images=args.images,
        annotations=args.annotations,
        styles=tuple(s.strip() for s in args.styles.split(",") if s.strip()),
        test_style=args.test_style,
        test_fraction=args.test_fraction,
        cache=args.cache,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        seed=args.seed,
    )


def summary_line(manifest: Any, out: str) -> str:
    rows = ", ".join(f"{n} {split}" for split, n in manifest.rows.items())
    return (
        f"{manifest.source}: {rows} rows, {manifest.num_classes} classes, "
        f"{manifest.tag_vocabulary_size} tags; skipped {len(manifest.skipped)} -> {out}"
    )


def run(args: argparse.Namespace) -> int:
    import ray

    from clinfo_ray.data.prepare import prepare

    try:
        config = config_from_args(args)
        if not ray.is_initialized():
            ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
        manifest = prepare(config)
    except (PrepareError, FileNotFoundError, ValueError) as err:
        print(f"clinfo-ray prepare: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # anything else still ends in one line, not a traceback
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"clinfo-ray prepare: {type(err).__name__}: {first}", file=sys.stderr)
        return 1
    print(summary_line(manifest, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m clinfo_ray.data.prepare_cli``: the same as ``clinfo-ray prepare``."""
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(prog="clinfo-ray prepare", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
