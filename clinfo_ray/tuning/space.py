"""A search space file: which config keys a search varies, how, and what it fixes.

    # tune_spaces/clusters_temperature.yaml
    set:                                # fixed for every trial (optional)
      clusters.method: tags
    search:                             # dotted config key -> how to draw it
      clusters.top_k: {type: grid, values: [2, 4, 8]}
      loss.temperature: {type: loguniform, low: 0.05, high: 0.5}
    num_samples: 2                      # optional: draws of the space (default 1)

Kinds: ``choice`` (one of ``values``, drawn), ``grid`` (every one of ``values``),
``uniform`` and ``loguniform`` (a float in [low, high)), ``randint`` (an int in [low, high),
high excluded as in Ray Tune). A grid is repeated ``num_samples`` times with fresh draws of the
other keys.

Everything is checked on load against the typed config, before Ray starts: an unknown key, a
kind that does not fit the key's type, an empty list, ``low >= high``, and every value and
bound applied to the base config with :func:`apply_overrides` (so ``loss.temperature: 0``
fails as the config would). Each error is a :class:`ConfigError` naming the file, the line and
the key. Precedence of a trial's config: the ``--config`` file < the space's ``set`` < the
command's ``--set`` < the trial's drawn values; a key may not be both drawn and fixed.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from clinfo_ray.config import ConfigError, TrainConfig, apply_overrides
from clinfo_ray.config.loading import YamlLoader, named_file

Kind = Literal["choice", "grid", "uniform", "loguniform", "randint"]
LIST_KINDS = ("choice", "grid")
RANGE_KINDS = ("uniform", "loguniform", "randint")
TOP_LEVEL = ("set", "search", "num_samples")

# The spaces shipped with the project (a checkout's tune_spaces/): --space NAME finds them.
SPACES_DIR = Path(__file__).resolve().parents[2] / "tune_spaces"

# Keys a search decides itself: never drawn (and the first two never fixed either).
OWNED_KEYS = {
    "run.name": "each trial's run is named by its trial id",
    "eval.knn_every": "the search scores every epoch (it sets eval.knn_every 1 for its trials)",
    "run.output_dir": "the trials run under the search's own folder (fix it under set:)",
    "optim.epochs": "it is every trial's budget, ASHA's max_t (fix it under set:)",
}
NEVER_FIXED = ("run.name", "eval.knn_every")


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``values`` for choice and grid, ``low``/``high`` for the ranges."""

    key: str
    kind: Kind
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None

    @property
    def probes(self) -> tuple[Any, ...]:
        """The values checked against the config: every listed value, or both bounds (the
        largest int of a randint, whose high is excluded)."""
        if self.kind in LIST_KINDS:
            return self.values
        assert self.low is not None and self.high is not None
        if self.kind == "randint":
            return (int(self.low), int(self.high) - 1)
        return (self.low, self.high)

    @property
    def log_scale(self) -> bool:
        return self.kind == "loguniform"

    def domain(self) -> Any:
        """The Ray Tune search domain (imports Ray Tune)."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        assert self.low is not None and self.high is not None
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        return tune.randint(int(self.low), int(self.high))

    def describe(self) -> dict[str, Any]:
        if self.kind in LIST_KINDS:
            return {"type": self.kind, "values": list(self.values)}
        return {"type": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    dimensions: tuple[Dimension, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)  # the file's `set:`
    num_samples: int = 1

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    @property
    def has_grid(self) -> bool:
        return any(d.kind == "grid" for d in self.dimensions)

    def dimension(self, key: str) -> Dimension:
        return next(d for d in self.dimensions if d.key == key)

    def base_config(self, config: TrainConfig, cli: Mapping[str, Any] | None = None) -> Any:
        """The config every trial starts from: ``config`` (the ``--config`` file with the
        command's ``--set``), the space's ``set``, and the command's ``--set`` (``cli``) again,
        which wins over the space."""
        return _with_fixed(config, self.fixed, cli or {}, str(self.path))

    def param_space(self) -> dict[str, Any]:
        """Ray Tune's param_space: dotted key -> domain (imports Ray Tune)."""
        return {d.key: d.domain() for d in self.dimensions}

    def grid_size(self) -> int:
        return math.prod(len(d.values) for d in self.dimensions if d.kind == "grid")

    def describe(self) -> dict[str, Any]:
        """The space as plain data (what a search records to recognise itself when rerun)."""
        return {
            "set": dict(self.fixed),
            "search": {d.key: d.describe() for d in self.dimensions},
            "num_samples": self.num_samples,
        }


def space_path(name_or_path: str | Path) -> Path:
    """A space file: the path itself when it exists, else ``tune_spaces/NAME.yaml``."""
    return named_file(name_or_path, SPACES_DIR, "search space")


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> 1-based line of each key under ``set:`` and ``search:``."""
    try:
        root = yaml.compose(text, Loader=YamlLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[str, str], int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for name, value in root.value:
        lines[("", str(name.value))] = name.start_mark.line + 1
        if isinstance(value, yaml.MappingNode):
            for key, _ in value.value:
                lines[(str(name.value), str(key.value))] = key.start_mark.line + 1
    return lines


class _Reader:
    """Reads one space file, every error naming the file, line and key."""

    def __init__(self, path: Path, base: TrainConfig, cli: Mapping[str, Any]) -> None:
        self.path = path
        self.base = base
        self.cli = cli
        try:
            self.text = path.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read search space {path}: {err.strerror or err}") from err
        self.lines = _key_lines(self.text)

    def fail(self, section: str, key: str, problem: str) -> ConfigError:
        line = self.lines.get((section, key))
        where = f"{self.path}" + (f" line {line}" if line else "")
        label = f"{section}: {key}" if section else key
        return ConfigError(f"{where}: {label}: {problem}", key=key)

    def load(self) -> SearchSpace:
        try:
            raw = yaml.load(self.text, Loader=YamlLoader)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{self.path}:{mark.line + 1}" if mark is not None else str(self.path)
            what = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{where}: not valid YAML: {what}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.path}: expected a mapping with a `search:` section")
        for name in raw:
            if name not in TOP_LEVEL:
                raise self.fail("", str(name), f"unknown section (known: {', '.join(TOP_LEVEL)})")
        fixed = self._fixed(raw.get("set") or {})
        base = self._base(fixed)
        search = raw.get("search")
        if not isinstance(search, dict) or not search:
            raise ConfigError(f"{self.path}: `search:` must map at least one config key")
        dims = tuple(self._dimension(str(key), spec, fixed, base) for key, spec in search.items())
        samples = raw.get("num_samples", 1)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise self.fail("", "num_samples", f"must be an int >= 1; got {samples!r}")
        return SearchSpace(self.path, dims, fixed, samples)

    def _fixed(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail("", "set", f"expected a mapping of dotted keys; got {raw!r}")
        fixed = {str(k): v for k, v in raw.items()}
        for key in fixed:
            self._known(key, "set")
            if key in NEVER_FIXED:
                raise self.fail("set", key, f"cannot be fixed: {OWNED_KEYS[key]}")
        return fixed

    def _base(self, fixed: Mapping[str, Any]) -> TrainConfig:
        """The base config with the space's ``set`` and the command's ``--set`` (the latter
        winning), checked together: a pair of keys may only be valid together."""
        try:
            return _with_fixed(self.base, fixed, self.cli, str(self.path))
        except ConfigError as err:
            if err.key is not None and err.key in fixed and err.key not in self.cli:
                raise self.fail("set", err.key, _reason(err)) from None
            raise ConfigError(
                f"{self.path}: set: with the command's --set: {err}", err.key
            ) from None

    def _known(self, key: str, section: str) -> Any:
        try:
            return TrainConfig.field_type(key)
        except ConfigError as err:
            raise self.fail(section, key, str(err)) from None

    def _dimension(
        self, key: str, spec: Any, fixed: Mapping[str, Any], base: TrainConfig
    ) -> Dimension:
        tp = self._known(key, "search")
        if key in OWNED_KEYS:
            raise self.fail("search", key, f"cannot be searched: {OWNED_KEYS[key]}")
        if key in fixed:
            raise self.fail("search", key, "is also fixed under set:; keep one of the two")
        if key in self.cli:
            raise self.fail("search", key, "is searched here; drop it from the command's --set")
        if not isinstance(spec, dict) or spec.get("type") not in (*LIST_KINDS, *RANGE_KINDS):
            kinds = ", ".join((*LIST_KINDS, *RANGE_KINDS))
            got = spec.get("type") if isinstance(spec, dict) else spec
            raise self.fail("search", key, f"expected {{type: {kinds}, ...}}; got {got!r}")
        kind = spec["type"]
        fields = ("type", "values") if kind in LIST_KINDS else ("type", "low", "high")
        unknown = [str(name) for name in spec if name not in fields]
        if unknown:
            raise self.fail(
                "search", key, f"{kind}: unknown field {unknown[0]!r} (fields: {', '.join(fields)})"
            )
        if kind in LIST_KINDS:
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise self.fail("search", key, f"{kind}: `values` must be a non-empty list")
            dim = Dimension(key, kind, values=tuple(values))
        else:
            dim = self._range(key, kind, spec, tp)
        for value in dim.probes:
            try:
                apply_overrides(base, {key: value}, str(self.path))
            except ConfigError as err:
                raise self.fail(
                    "search", key, f"value {value!r} does not fit: {_reason(err)}"
                ) from None
        return dim

    def _range(self, key: str, kind: Kind, spec: dict, tp: Any) -> Dimension:
        wanted = int if kind == "randint" else float
        if _scalar_type(tp) is not wanted:
            hint = "randint" if _scalar_type(tp) is int else "choice or grid"
            raise self.fail(
                "search",
                key,
                f"{kind} draws {wanted.__name__}s but the key is {_type_text(tp)}; use {hint}",
            )
        bounds: dict[str, Any] = {}
        for name in ("low", "high"):
            value = spec.get(name)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if not numeric or (wanted is int and not isinstance(value, int)):
                raise self.fail(
                    "search", key, f"{kind}: `{name}` must be a {wanted.__name__}; got {value!r}"
                )
            bounds[name] = value
        low, high = bounds["low"], bounds["high"]
        if low >= high:
            raise self.fail("search", key, f"{kind}: empty range, low {low} >= high {high}")
        if kind == "loguniform" and low <= 0:
            raise self.fail("search", key, f"loguniform: low must be > 0; got {low}")
        return Dimension(key, kind, low=low, high=high)


def _reason(err: ConfigError) -> str:
    """The config's message without its leading key (the space's message names it)."""
    text = str(err)
    prefix = f"{err.key}: "
    return text[len(prefix) :] if err.key and text.startswith(prefix) else text


def _with_fixed(
    config: TrainConfig, fixed: Mapping[str, Any], cli: Mapping[str, Any], source: str
) -> Any:
    return apply_overrides(config, {**fixed, **cli}, source)


def _scalar_type(tp: Any) -> Any:
    """``int`` for ``int`` and ``int | None``; likewise float; anything else as is."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_text(tp: Any) -> str:
    tp = _scalar_type(tp)
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def load_space(
    path: str | Path, base: TrainConfig, cli: Mapping[str, Any] | None = None
) -> SearchSpace:
    """Read and check a search space against ``base`` (the ``--config`` file with the
    command's ``--set`` overrides ``cli``, which also win over the space's ``set``)."""
    return _Reader(space_path(path), base, cli or {}).load()
