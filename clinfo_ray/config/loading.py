"""Load a TrainConfig from YAML with ``--set dotted.key=value`` overrides."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from clinfo_ray.config.sections import ConfigError
from clinfo_ray.config.train_config import _SECTIONS, TrainConfig, _set_leaf


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_YamlLoader.yaml_implicit_resolvers = {
    ch: list(resolvers) for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _is_text_field(key: str) -> bool:
    section, _, name = key.partition(".")
    if section not in _SECTIONS:
        return False
    tp = typing.get_type_hints(_SECTIONS[section]).get(name)
    return tp is str or (typing.get_origin(tp) is types.UnionType and str in typing.get_args(tp))


def parse_set_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=0.3", "run.name=x"]`` -> ``{"optim.lr": 0.3, ...}``; values are YAML scalars."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value", key=key)
        value = yaml.load(text, Loader=_YamlLoader) if text.strip() else None
        if isinstance(value, list | dict):
            raise ConfigError(f"--set {key}: expected a scalar value; got {text!r}", key=key)
        if value is not None and not isinstance(value, str) and _is_text_field(key):
            value = text.strip()  # run.name=2024 is the name "2024", not the int 2024
        overrides[key] = value
    return overrides


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config and apply ``--set dotted.key=value`` overrides, checking everything.

    Errors name the dotted key, the bad value, and where it came from (the file or --set).
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_YamlLoader) or {}
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections; got {type(raw).__name__}")
    parsed = parse_set_overrides(overrides)
    for key, value in parsed.items():
        _set_leaf(raw, key, value, "--set")
    try:
        return TrainConfig.from_dict(raw, str(path))
    except ConfigError as err:
        if err.key in parsed:
            where = f"from --set {err.key}={parsed[err.key]!r}"
        elif str(path) in str(err):
            raise
        else:
            where = f"in {path}" + (" with the --set overrides" if parsed else "")
        raise ConfigError(f"{err} ({where})", key=err.key) from None
