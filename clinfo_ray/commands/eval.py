"""``clinfo-ray eval --checkpoint PATH [--data DIR] [--out DIR] [eval flags] [--set eval.KEY=V]``:
linear probe and weighted kNN of a checkpoint's frozen features.

The settings are the checkpoint config's ``eval`` section, overridden by the flags (generated
from :class:`clinfo_ray.config.EvalConfig`) and ``--set eval.*``. Prints the results as JSON
(also written to ``<out>/<checkpoint name>.json``, with TensorBoard scalars beside it).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from clinfo_ray.commands.flags import add_address_argument, add_section_flags, flag_overrides
from clinfo_ray.config import EvalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint dir")
    parser.add_argument(
        "--data", metavar="DIR", help="prepared dataset (default: the checkpoint's data)"
    )
    parser.add_argument("--out", metavar="DIR", help="results folder (default: CHECKPOINT/../eval)")
    add_address_argument(parser)
    add_section_flags(parser.add_argument_group("eval"), EvalConfig)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="eval.KEY=VALUE",
        help="override an eval setting of the checkpoint's config (repeatable)",
    )


def locations(args: argparse.Namespace) -> dict[str, Any]:
    """What it reads and writes (checked inside a submitted job)."""
    return {"--checkpoint": args.checkpoint, "--data": args.data, "--out": args.out}


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.checkpointing import CheckpointError, read_checkpoint_state
    from clinfo_ray.commands.common import connect_ray, fail
    from clinfo_ray.config import ConfigError, apply_overrides, parse_set_overrides
    from clinfo_ray.storage.checks import LocationError, check_remote

    try:
        # URIs (s3://...) first: bucket, credentials, endpoint, access, each input's marker
        check_remote("--checkpoint", args.checkpoint, "folder", "state.json")
        check_remote("--data", args.data, "folder", "manifest.json")
        check_remote("--out", args.out, "output")
        config = read_checkpoint_state(args.checkpoint).train_config()
        overrides = parse_set_overrides(flag_overrides(args))
        for key in overrides:
            if not key.startswith("eval."):  # any other key would not change the evaluation
                raise ConfigError(f"--set {key}: eval takes only eval.* keys", key=key)
        if args.data:
            overrides["data.dataset_dir"] = args.data
        config = apply_overrides(config, overrides, source="--set")
    except (ConfigError, CheckpointError, LocationError) as err:
        return fail("eval", err)
    from clinfo_ray.evaluation.evaluate import evaluate_checkpoint

    connect_ray(args.address)  # a bad checkpoint or --set failed above, before Ray starts
    result = evaluate_checkpoint(args.checkpoint, config, out_dir=args.out)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
