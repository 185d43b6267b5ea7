"""Load a command's config from YAML with ``--set dotted.key=value`` overrides.

Every error is one line naming the dotted key, or the file and line (a YAML syntax error too).
A config may be given as a path or as the name of a config shipped with the package
(``quickstart``, ``gpu_resnet50``: ``clinfo_ray/configs/NAME.yaml``).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from clinfo_ray.config.section_base import ConfigError
from clinfo_ray.config.train_config import TrainConfig, _Root, set_leaf

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "configs"


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


YamlLoader.yaml_implicit_resolvers = {
    ch: list(resolvers) for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def named_file(name_or_path: str | Path, folder: Path, what: str) -> Path:
    """The file itself when the path exists, else ``folder/NAME.yaml`` for a bare NAME; a
    ConfigError listing the names in ``folder`` otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = folder / f"{name_or_path}.yaml"
    if "/" not in str(name_or_path) and shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
    raise ConfigError(f"no {what} file {str(name_or_path)!r} (shipped: {known})")


def config_path(name_or_path: str | Path) -> Path:
    """A config file: the path itself when it exists, else a bundled config of that name."""
    return named_file(name_or_path, BUNDLED_DIR, "config")


def _uri_or_config_path(name: str | Path) -> Any:
    """A URI (``s3://bucket/best.yaml``: a search's best.yaml in a bucket) as it is; else
    :func:`config_path`."""
    from clinfo_ray.storage import location as loc

    return name if isinstance(name, str) and loc.is_uri(name) else config_path(name)


def _read_text(path: str | Path) -> str:
    from clinfo_ray.storage import location as loc

    return loc.read_text(path)  # a URI or a local path


def _is_text(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) is types.UnionType and str in typing.get_args(tp))


def parse_set_overrides(items: Sequence[str], root: type[_Root] = TrainConfig) -> dict[str, Any]:
    """``["optim.lr=0.3", "run.name=x"]`` -> ``{"optim.lr": 0.3, ...}``; values are YAML scalars
    (a list field also takes a YAML list, or one comma-separated string)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value", key=key)
        tp = root.field_type(key)  # an unknown key fails here, naming it
        try:
            value = yaml.load(text, Loader=YamlLoader) if text.strip() else None
        except yaml.YAMLError:
            value = text.strip()  # not a YAML scalar: the text itself (the type check decides)
        is_list = typing.get_origin(tp) is tuple
        if isinstance(value, dict) or (isinstance(value, list) and not is_list):
            raise ConfigError(f"--set {key}: expected a scalar value; got {text!r}", key=key)
        if value is not None and not isinstance(value, str | list) and _is_text(tp):
            value = text.strip()  # run.name=2024 is the name "2024", not the int 2024
        overrides[key] = value
    return overrides


def yaml_error(path: str | Path, err: yaml.YAMLError) -> ConfigError:
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = getattr(err, "problem", None) or str(err).splitlines()[0]
    return ConfigError(f"{where}: not valid YAML: {what}")


def line_of(text: str, key: str) -> int | None:
    """1-based line of a dotted key in a YAML text (None when it is not written there). A
    mapping may spell part of the key as one dotted name (``set: {optim.lr: 0.1}``): the
    longest such name is followed."""
    try:
        node = yaml.compose(text, Loader=YamlLoader)
    except yaml.YAMLError:
        return None
    line = None
    parts = key.split(".")
    while parts:
        if not isinstance(node, yaml.MappingNode):
            return line
        names = {name.value: (name, value) for name, value in node.value}
        for size in range(len(parts), 0, -1):
            found = names.get(".".join(parts[:size]))
            if found is not None:
                line, node, parts = found[0].start_mark.line + 1, found[1], parts[size:]
                break
        else:
            return line
    return line


def load_config(
    path: str | Path, overrides: Sequence[str] = (), root: type[_Root] = TrainConfig
) -> Any:
    """Read a YAML config and apply ``--set dotted.key=value`` overrides, checking everything.

    Errors name the dotted key, the bad value, and where it came from (the file and line, or
    --set)."""
    path = _uri_or_config_path(path)
    try:
        text = _read_text(path)
        raw = yaml.load(text, Loader=YamlLoader) or {}
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise yaml_error(path, err) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections; got {type(raw).__name__}")
    parsed = parse_set_overrides(overrides, root)
    for key, value in parsed.items():
        set_leaf(root, raw, key, value, "--set")
    try:
        return root.from_dict(raw, "the config")
    except ConfigError as err:
        if err.key in parsed:
            where = f"from --set {err.key}={parsed[err.key]!r}"
        else:
            line = line_of(text, err.key) if err.key else None
            where = f"in {path}" + (f" line {line}" if line else "")
            if parsed:
                where += " with the --set overrides"
        raise ConfigError(f"{err} ({where})", key=err.key) from None


def load_or_default(
    path: str | Path | None, overrides: Sequence[str] = (), root: type[_Root] = TrainConfig
) -> Any:
    """:func:`load_config`, or the root's defaults with the overrides when no file is given."""
    if path is not None:
        return load_config(path, overrides, root)
    parsed = parse_set_overrides(overrides, root)
    raw: dict[str, Any] = {}
    for key, value in parsed.items():
        set_leaf(root, raw, key, value, "--set")
    try:
        return root.from_dict(raw, "--set")
    except ConfigError as err:
        source = f"--set {err.key}={parsed[err.key]!r}" if err.key in parsed else "--set"
        raise ConfigError(f"{err} (from {source})", key=err.key) from None
