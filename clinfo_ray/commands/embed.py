"""``clinfo-ray embed``: every image of a dataset (or a folder) through a frozen encoder, written
as Parquet shards of (id, split, label, embedding) with a manifest.

    clinfo-ray embed (--checkpoint CKPT | --encoder DIR)
                     (--data DATASET [--splits train,test] | --images FOLDER)
                     --out OUT [--normalize] [--overwrite] [--batch-size N] [--num-actors N]
                     [--device auto|cpu|gpu] [--label-column label|coarse_label]

Every split by default. ``--encoder DIR``: an export directory (``encoder.pt`` TorchScript and
``preprocess.json``). ``--images FOLDER``: every image file under the folder, no annotations
needed: id = relative path, split ``images``, no label. The inference settings default to the
checkpoint's ``eval`` section (else :class:`clinfo_ray.config.EvalConfig`'s defaults) and the
label to its ``data.label_column``. A missing checkpoint, dataset or folder, an unknown split and
an OUT that is not empty (without ``--overwrite``) fail in one line before Ray starts. Shows Ray
Data's progress bar; prints the manifest (``OUT/manifest.json``) as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
from typing import Any

from clinfo_ray.commands.flags import add_address_argument, add_section_flags, flag_overrides
from clinfo_ray.config import DataConfig, EvalConfig

_DATA_FLAGS = {"label_column": "label-column"}
_EVAL_FLAGS = ("batch_size", "num_actors", "device")  # of the inference pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    encoder = parser.add_mutually_exclusive_group(required=True)
    encoder.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint directory")
    encoder.add_argument(
        "--encoder", metavar="DIR", help="an exported encoder (what `clinfo-ray export` writes)"
    )
    images = parser.add_mutually_exclusive_group(required=True)
    images.add_argument("--data", metavar="DATASET", help="a prepared dataset folder")
    images.add_argument("--images", metavar="FOLDER", help="any folder of image files")
    parser.add_argument(
        "--splits", metavar="A,B", help="the dataset's splits to embed (default: every split)"
    )
    parser.add_argument("--out", required=True, metavar="OUT", help="folder for the shards")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier embed output in OUT"
    )
    add_address_argument(parser)
    add_section_flags(
        parser,
        DataConfig,
        skip=[f.name for f in dataclasses.fields(DataConfig) if f.name not in _DATA_FLAGS],
        rename=_DATA_FLAGS,
    )
    add_section_flags(
        parser.add_argument_group("inference"),
        EvalConfig,
        skip=[f.name for f in dataclasses.fields(EvalConfig) if f.name not in _EVAL_FLAGS],
    )


def command_line(args: argparse.Namespace) -> str:
    """The command as given, rebuilt from its arguments (what the manifest records)."""
    argv = ["clinfo-ray", "embed"]
    for flag in ("checkpoint", "encoder", "data", "splits", "images", "out"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", getattr(args, flag)]
    argv += [f"--{flag}" for flag in ("normalize", "overwrite") if getattr(args, flag)]
    for item in flag_overrides(args):  # data.label_column=x -> --label-column x
        key, value = item.split("=", 1)
        name = key.rsplit(".", 1)[-1]
        argv += [f"--{_DATA_FLAGS.get(name, name.replace('_', '-'))}", value]
    return shlex.join(argv)


def prepare(args: argparse.Namespace) -> tuple[Any, Any, EvalConfig]:
    """(encoder, images, inference settings), every input checked; no Ray."""
    from clinfo_ray.config import TrainConfig, apply_overrides, parse_set_overrides
    from clinfo_ray.evaluation.embed import DatasetImages, FolderImages
    from clinfo_ray.evaluation.embed_output import check_out
    from clinfo_ray.evaluation.encoder_source import CheckpointEncoder, ExportedEncoder
    from clinfo_ray.storage.checks import check_remote

    # URIs (s3://...) first: bucket, credentials, endpoint, access, the marker of each input
    check_remote("--checkpoint", args.checkpoint, "folder", "state.json")
    check_remote("--encoder", args.encoder, "folder", "preprocess.json")
    check_remote("--data", args.data, "folder", "manifest.json")
    check_remote("--images", args.images, "folder")
    check_remote("--out", args.out, "output")
    if args.checkpoint:
        from clinfo_ray.checkpointing import read_checkpoint_state

        encoder: Any = CheckpointEncoder.checked(args.checkpoint)
        config = read_checkpoint_state(args.checkpoint).train_config()
    else:
        encoder = ExportedEncoder.checked(args.encoder)
        config = TrainConfig()
    config = apply_overrides(config, parse_set_overrides(flag_overrides(args)), source="flags")
    if args.images is not None:
        if args.splits:
            raise ValueError("--splits: only with --data (a folder's images have no splits)")
        images: Any = FolderImages.checked(args.images)
    else:
        splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
        images = DatasetImages.checked(args.data, splits, config.data.label_column)
    check_out(args.out, overwrite=args.overwrite)
    return encoder, images, config.eval


def locations(args: argparse.Namespace) -> dict[str, Any]:
    """What it reads and writes (checked inside a submitted job)."""
    names = ("checkpoint", "encoder", "data", "images", "out")
    return {f"--{name}": getattr(args, name) for name in names}


def run(args: argparse.Namespace) -> int:
    from clinfo_ray.checkpointing import CheckpointError
    from clinfo_ray.commands.common import connect_ray, fail
    from clinfo_ray.config import ConfigError
    from clinfo_ray.export import ExportError

    try:
        encoder, images, settings = prepare(args)
    except (ConfigError, CheckpointError, ExportError, ValueError, FileNotFoundError) as err:
        return fail("embed", err)
    import ray

    from clinfo_ray.evaluation.embed_output import write_embeddings

    connect_ray(args.address)
    # Ray Data's progress: a bar on a terminal, else lines logged every few seconds (which
    # connect_ray quiets for the other commands)
    ray.data.DataContext.get_current().enable_progress_bars = True
    logging.getLogger("ray.data._internal.progress").setLevel(logging.INFO)
    manifest = write_embeddings(
        images,
        encoder,
        settings,
        args.out,
        normalize=args.normalize,
        command=command_line(args),
        overwrite=args.overwrite,
    )
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0
