"""`clinfo-ray eval`: linear probe and weighted kNN of a checkpoint's frozen features.

clinfo-ray eval --checkpoint PATH [--data DIR] [--out DIR] [--set eval.knn_k=50 ...]

Prints the results as JSON (also written to ``<out>/<checkpoint name>.json``, with TensorBoard
scalars beside it). The eval settings default to the checkpoint config's ``eval`` section.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from clinfo_ray.config import (
    ConfigError,
    EvalConfig,
    TrainConfig,
    apply_overrides,
    parse_set_overrides,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint dir")
    parser.add_argument(
        "--data", metavar="DIR", help="prepared dataset (default: the checkpoint's data)"
    )
    parser.add_argument("--out", metavar="DIR", help="results folder (default: CHECKPOINT/../eval)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="eval.KEY=VALUE",
        help="override an eval setting of the checkpoint's config (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per encoder call")
    parser.add_argument("--num-actors", type=int, help="encoder actors (default: from the cluster)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="where the encoder actors run (auto: GPU when the Ray cluster has one)",
    )
    parser.add_argument("--seed", type=int, default=0, help="linear-probe seed")


def eval_config_with_overrides(config: TrainConfig, overrides: Sequence[str]) -> EvalConfig:
    """The checkpoint config's ``eval`` section with ``eval.key=value`` overrides applied and
    checked; a key of another section is an error (it would not change the evaluation)."""
    parsed = parse_set_overrides(overrides)
    for key in parsed:
        if not key.startswith("eval."):
            raise ConfigError(f"--set {key}: eval takes only eval.* keys", key=key)
    return apply_overrides(config, parsed, source="--set").eval


def run(args: argparse.Namespace) -> int:
    import ray

    from clinfo_ray.checkpointing import CheckpointError, read_checkpoint_state
    from clinfo_ray.evaluation.evaluate import evaluate_checkpoint

    try:
        config = read_checkpoint_state(args.checkpoint).train_config()
        eval_cfg = eval_config_with_overrides(config, args.overrides)
    except (ConfigError, CheckpointError) as err:
        print(f"clinfo-ray eval: {err}", file=sys.stderr)
        return 2
    if not ray.is_initialized():  # a bad checkpoint or --set failed above, before Ray starts
        ray.init(configure_logging=False)
    use_gpu = {"auto": None, "cpu": False, "gpu": True}[args.device]
    result = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        eval_cfg,
        out_dir=args.out,
        batch_size=args.batch_size,
        use_gpu=use_gpu,
        num_actors=args.num_actors,
        seed=args.seed,
    )
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
