"""``clinfo-ray prepare [SOURCE] [--out DIR] [options] [--config FILE] [--set prepare.KEY=VALUE]``:
write a dataset as Parquet shards + manifest.json.

Every option is a field of :class:`clinfo_ray.config.PrepareConfig` (its flags are generated
from it). Exit status 0 when the dataset was written (possibly with skipped images, which the
manifest lists), 2 with a one-line reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clinfo_ray.commands.flags import (
    add_address_argument,
    add_config_arguments,
    add_section_flags,
    flag_overrides,
)
from clinfo_ray.config import PrepareConfig, PrepareJob, load_or_default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_section_flags(parser, PrepareConfig, positional=("source",))
    add_config_arguments(parser, config_help=CONFIG_HELP, set_example="prepare.shard_size=500")
    add_address_argument(parser)


# prepare reads only its own section: the bundled configs are training configs, never offered
CONFIG_HELP = "YAML file whose one section is 'prepare:' (its keys: the flags above); a path"


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """The prepare section: defaults < --config file < flags < --set."""
    from clinfo_ray.config import ConfigError

    if args.config is not None and not Path(args.config).is_file():
        raise ConfigError(
            f"--config {args.config}: no such file (prepare reads a YAML file whose one "
            "section is 'prepare:'; the bundled configs are training configs, with no such "
            "section: give the options as flags, e.g. clinfo-ray prepare emoji --out data/emoji)"
        )
    job: PrepareJob = load_or_default(args.config, flag_overrides(args), PrepareJob)
    return job.prepare


def locations(args: argparse.Namespace) -> dict[str, Any]:
    """What it reads and writes (checked inside a submitted job)."""
    config = config_from_args(args)
    names = ("out", "images", "annotations", "cache")
    return {f"prepare.{name}": getattr(config, name) for name in names}


def summary_line(manifest: Any, out: str) -> str:
    rows = ", ".join(f"{n} {split}" for split, n in manifest.rows.items())
    return (
        f"{manifest.source}: {rows} rows, {manifest.num_classes} classes, "
        f"{manifest.tag_vocabulary_size} tags; skipped {len(manifest.skipped)} -> {out}"
    )


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.commands.common import connect_ray, fail
    from clinfo_ray.config import ConfigError
    from clinfo_ray.data.write.prepare import list_source, prepare
    from clinfo_ray.data.write.sources.source_table import PrepareError
    from clinfo_ray.storage.checks import check_remote

    try:
        config = config_from_args(args)
        source = list_source(config)  # a missing folder, file or npm fails here, before Ray
        check_remote("prepare.out", config.out, "output")  # a bucket: reachable, writable
    except (ConfigError, PrepareError, FileNotFoundError, ValueError) as err:
        return fail("prepare", err)
    connect_ray(args.address)
    try:
        manifest = prepare(config, source)
    except (PrepareError, FileNotFoundError, ValueError) as err:
        return fail("prepare", err)
    except Exception as err:  # anything else still ends in one line, not a traceback
        return fail("prepare", f"{type(err).__name__}: {err}", status=1)
    print(summary_line(manifest, config.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m clinfo_ray.commands.prepare``: the same as ``clinfo-ray prepare``."""
    from clinfo_ray.commands.common import setup_logging

    parser = argparse.ArgumentParser(prog="clinfo-ray prepare", description=__doc__.splitlines()[0])
    add_arguments(parser)
    setup_logging()
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
