"""``clinfo-ray train --config FILE [--set dotted.key=value ...]``."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set optim.epochs=10 (repeatable)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (default: the one `ray job submit` or RAY_ADDRESS names, "
        "else a new local one)",
    )


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.config import ConfigError, load_config
    from clinfo_ray.training.launch import check_before_ray

    try:
        cfg = load_config(args.config, args.overrides)
        check_before_ray(cfg)  # a bad config fails before Ray starts
    except ConfigError as err:
        print(f"clinfo-ray train: {err}", file=sys.stderr)
        return 2
    from clinfo_ray.training.launch import train
    from clinfo_ray.training.ray_session import ensure_ray

    ensure_ray(args.address, cfg)
    outcome = train(cfg)
    print(
        json.dumps(
            {
                "run_dir": str(outcome.run_dir),
                "checkpoint": str(outcome.checkpoint) if outcome.checkpoint else None,
                "metrics": outcome.metrics,
            },
            indent=2,
            default=str,
        )
    )
    print(f"tensorboard --logdir {outcome.run_dir / 'tensorboard'}")
    return 0
