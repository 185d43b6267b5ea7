"""Typed, frozen configuration: one dataclass per stage, composed into :class:`TrainConfig`.

Every field is checked in ``__post_init__`` (type, choice, range) and a bad value raises
:class:`ConfigError` naming its dotted key (``model.backbone``) and the value. Values that follow
from others are properties, never fields written later. A config crosses into Ray as the plain
dict of :meth:`TrainConfig.to_dict` and is rebuilt with :meth:`TrainConfig.from_dict`; Ray Tune
overrides its leaves by dotted key with :func:`apply_overrides`.

YAML layout: one mapping per section (``data``, ``clusters``, ``model``, ``loss``, ``optim``,
``eval``, ``run``); a missing section or key takes its default. Unknown keys fail.
"""

from clinfo_ray.config.loading import load_config, parse_set_overrides
from clinfo_ray.config.sections import (
    ClustersConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
)
from clinfo_ray.config.train_config import TrainConfig, apply_overrides

__all__ = [
    "ClustersConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "parse_set_overrides",
]
