"""Typed, frozen configuration: one dataclass per stage, composed into each command's config.

Every field is checked in ``__post_init__`` (type, choice, range) and a bad value raises
:class:`ConfigError` naming its dotted key (``model.backbone``, ``clusters.kmeans.seed``) and
the value. Values that follow from others are properties, never fields written later. A config
crosses into Ray as the plain dict of ``to_dict`` and is rebuilt with ``from_dict``; Ray Tune and
the command-line flags override its leaves by dotted key with :func:`apply_overrides`.

YAML layout: one mapping per section (``data``, ``clusters``, ``model``, ``loss``, ``optim``,
``eval``, ``run``; ``prepare`` for the prepare command); a missing section or key takes its
default. Unknown keys fail.
"""

from clinfo_ray.config.loading import (
    bundled_configs,
    config_path,
    load_config,
    load_or_default,
    parse_set_overrides,
)
from clinfo_ray.config.section_base import ConfigError
from clinfo_ray.config.sections import (
    ClustersConfig,
    DataConfig,
    Device,
    EvalConfig,
    KMeansSettings,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PrepareConfig,
    RunConfig,
)
from clinfo_ray.config.train_config import PrepareJob, TrainConfig, apply_overrides

__all__ = [
    "ClustersConfig",
    "ConfigError",
    "DataConfig",
    "Device",
    "EvalConfig",
    "KMeansSettings",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PrepareConfig",
    "PrepareJob",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "bundled_configs",
    "config_path",
    "load_config",
    "load_or_default",
    "parse_set_overrides",
]
