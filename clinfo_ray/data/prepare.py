"""Turn a dataset source into a clinfo-ray dataset folder: the one library call behind
``clinfo-ray prepare`` and ``jobs/prepare.py``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from clinfo_ray.data.manifest import Manifest
from clinfo_ray.data.shard_writer import DEFAULT_SHARD_SIZE, write_dataset
from clinfo_ray.data.sources.source_table import PrepareError, SourceTable

SOURCES = ("emoji", "imagefolder", "cub200", "ut-zappos50k", "fashion-mnist", "mnist")
IDX_DEFAULT_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}


@dataclass(frozen=True)
class PrepareConfig:
    """What to prepare and where. ``images`` is the source's folder (not used by ``emoji``).

    ``seed``: rows are written in one random permutation drawn from it (manifest
    ``row_order.permutation_seed``), never in the source's order; the split does not depend on it.
    """

    source: str
    out: str
    images: str | None = None
    annotations: str | None = None
    styles: tuple[str, ...] = ("google",)
    test_style: str | None = None
    test_fraction: float = 0.2
    cache: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    overwrite: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise PrepareError(f"source must be one of {list(SOURCES)}, got {self.source!r}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise PrepareError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.shard_size < 1:
            raise PrepareError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.source == "imagefolder" and (self.images is None or self.annotations is None):
            raise PrepareError("imagefolder needs --images DIR and --annotations FILE")
        if self.source in ("cub200", "ut-zappos50k") and self.images is None:
            raise PrepareError(f"{self.source} needs --images DIR (the dataset's root folder)")

    @property
    def source_dir(self) -> Path:
        if self.images is not None:
            return Path(self.images)
        return Path(IDX_DEFAULT_DIRS.get(self.source, "."))


def list_source(config: PrepareConfig) -> SourceTable:
    """The images of ``config.source``, listed but not yet read."""
    if config.source == "emoji":
        from clinfo_ray.data.sources.emoji import load_emoji

        return load_emoji(
            styles=config.styles,
            test_fraction=config.test_fraction,
            test_style=config.test_style,
            cache=config.cache,
        )
    if config.source == "imagefolder":
        from clinfo_ray.data.sources.imagefolder import load_imagefolder

        assert config.annotations is not None  # checked in __post_init__
        return load_imagefolder(
            config.source_dir, config.annotations, test_fraction=config.test_fraction
        )
    if config.source == "cub200":
        from clinfo_ray.data.sources.cub200 import load_cub200

        return load_cub200(config.source_dir)
    if config.source == "ut-zappos50k":
        from clinfo_ray.data.sources.ut_zappos50k import load_ut_zappos50k

        return load_ut_zappos50k(config.source_dir, test_fraction=config.test_fraction)
    from clinfo_ray.data.sources.idx import load_idx

    return load_idx(config.source_dir, name=config.source)


def prepare(config: PrepareConfig) -> Manifest:
    """List the source, then read, check and write it as Parquet shards (needs Ray running)."""
    source = list_source(config)
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
