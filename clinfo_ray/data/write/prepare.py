"""Turn a dataset source into a clinfo-ray dataset folder: the one library call behind
``clinfo-ray prepare`` and ``jobs/prepare.py``."""

from __future__ import annotations

import typing
from dataclasses import asdict
from pathlib import Path

from clinfo_ray.config import PrepareConfig
from clinfo_ray.config.sections import SourceName
from clinfo_ray.data.manifest import Manifest
from clinfo_ray.data.write.shard_writer import write_dataset
from clinfo_ray.data.write.sources.source_table import SourceTable, keep_train_per_class

SOURCES = typing.get_args(SourceName)
IDX_DEFAULT_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}


def source_dir(config: PrepareConfig) -> Path:
    """The source's folder: ``images``, else the default folder of an IDX set."""
    if config.images is not None:
        return Path(config.images)
    return Path(IDX_DEFAULT_DIRS.get(config.source, "."))


def list_source(config: PrepareConfig) -> SourceTable:
    """The images of ``config.source``, listed but not yet read (at most
    ``config.train_per_class`` train images of each label)."""
    source = _list_all(config)
    if config.train_per_class is None:
        return source
    return keep_train_per_class(source, config.train_per_class)


def _list_all(config: PrepareConfig) -> SourceTable:
    if config.source == "emoji":
        from clinfo_ray.data.write.sources.emoji import load_emoji

        return load_emoji(
            styles=config.styles,
            test_fraction=config.test_fraction,
            test_style=config.test_style,
            cache=config.cache,
        )
    if config.source == "imagefolder":
        from clinfo_ray.data.write.sources.imagefolder import load_imagefolder

        assert config.annotations is not None  # PrepareConfig checks it
        return load_imagefolder(
            source_dir(config), config.annotations, test_fraction=config.test_fraction
        )
    if config.source == "cub200":
        from clinfo_ray.data.write.sources.cub200 import load_cub200

        return load_cub200(source_dir(config))
    if config.source == "ut-zappos50k":
        from clinfo_ray.data.write.sources.ut_zappos50k import load_ut_zappos50k

        return load_ut_zappos50k(source_dir(config), test_fraction=config.test_fraction)
    from clinfo_ray.data.write.sources.idx import load_idx

    return load_idx(source_dir(config), name=config.source)


def prepare(config: PrepareConfig, source: SourceTable | None = None) -> Manifest:
    """List the source (unless ``source`` is its listing, made before Ray started: a missing
    folder or package then fails before Ray starts), then read, check and write it as Parquet
    shards (needs Ray running)."""
    source = list_source(config) if source is None else source
    options = {k: v for k, v in asdict(config).items() if k not in ("out", "overwrite")}
    options["styles"] = list(config.styles)  # as JSON will read it back
    return write_dataset(
        source,
        config.out,
        name=config.source,
        shard_size=config.shard_size,
        overwrite=config.overwrite,
        options=options,
        seed=config.seed,
    )
