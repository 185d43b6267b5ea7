"""``clinfo-ray train --config FILE|NAME [--set dotted.key=value ...] [--address ADDR]``.

A bad config, dataset or batch size fails in one line before Ray starts. Prints the run's
folder, last checkpoint and last metrics as JSON, and the TensorBoard command.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from clinfo_ray.commands.flags import add_address_argument, add_config_arguments, flag_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, required=True)
    add_address_argument(parser)


def locations(args: argparse.Namespace) -> dict[str, Any]:
    """The run's dataset, output folder and cluster table (checked inside a submitted job)."""
    from clinfo_ray.commands.common import train_locations
    from clinfo_ray.config import load_config

    return train_locations(load_config(args.config, flag_overrides(args)))


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.commands.common import connect_ray, fail
    from clinfo_ray.config import ConfigError, load_config
    from clinfo_ray.training.launch import check_before_ray

    try:
        cfg = load_config(args.config, flag_overrides(args))
        check_before_ray(cfg)  # a bad config fails before Ray starts
    except ConfigError as err:
        return fail("train", err)
    from clinfo_ray.training.launch import train

    connect_ray(args.address, cpus_needed=cfg.run.num_workers * cfg.run.cpus_per_worker)
    outcome = train(cfg)
    summary = {  # local paths, or URIs for a run in a bucket
        "run_dir": outcome.run_uri,
        "checkpoint": outcome.checkpoint_uri,
        "metrics": outcome.metrics,
    }
    print(json.dumps(summary, indent=2, default=str))
    print(f"tensorboard --logdir {outcome.run_uri.rstrip('/')}/tensorboard")
    return 0
