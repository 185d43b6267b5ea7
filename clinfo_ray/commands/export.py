"""``clinfo-ray export --checkpoint PATH --out DIR [--with-head] [--onnx] [--overwrite]``: a
checkpoint's encoder as files that plain torch (or onnxruntime) runs without clinfo-ray.

Writes ``encoder.safetensors``, ``encoder.pt2`` (torch.export) and ``preprocess.json`` (the
layout is in :mod:`clinfo_ray.export`); no Ray is started. Prints the path of preprocess.json.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint dir")
    parser.add_argument("--out", required=True, metavar="DIR", help="export directory to write")
    parser.add_argument(
        "--with-head", action="store_true", help="also the projection head (head.safetensors)"
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also encoder.onnx, checked with onnxruntime (pip install 'clinfo-ray[export]')",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an export in a non-empty --out"
    )


def locations(args: argparse.Namespace) -> dict[str, Any]:
    """What it reads and writes (checked inside a submitted job)."""
    return {"--checkpoint": args.checkpoint, "--out": args.out}


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.checkpointing import CheckpointError
    from clinfo_ray.commands.common import fail
    from clinfo_ray.config import ConfigError
    from clinfo_ray.export import ExportError, export_encoder
    from clinfo_ray.export.description import PREPROCESS_FILE
    from clinfo_ray.storage.checks import LocationError, check_remote

    try:
        check_remote("--checkpoint", args.checkpoint, "folder", "state.json")  # a URI: s3://...
        check_remote("--out", args.out, "output")
        export_encoder(
            args.checkpoint,
            args.out,
            with_head=args.with_head,
            onnx=args.onnx,
            overwrite=args.overwrite,
        )
    except (CheckpointError, ConfigError, ExportError, LocationError) as err:
        return fail("export", err)
    print(f"{args.out.rstrip('/')}/{PREPROCESS_FILE}")
    return 0
