"""What every stage config shares: the error that names a dotted key, the generic type checks
of a field, and :class:`_Section`, the base of the frozen stage dataclasses (``sections.py``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the dotted key (also ``.key``)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _check_value(key: str, value: Any, tp: Any) -> Any:
    """``value`` if it has type ``tp`` (ints widen to float, lists become tuples, a mapping
    becomes the nested section it describes), else ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_value(key, value, arg)
            except ConfigError:
                pass
    elif origin is Literal:
        if isinstance(value, str) and value in typing.get_args(tp):
            return value
    elif origin is tuple:  # tuple[str | int, ...]: a YAML list, or one comma-separated string
        item = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [_item_of(part.strip(), item) for part in value.split(",") if part.strip()]
        elif item is int and isinstance(value, int) and not isinstance(value, bool):
            value = [value]  # --set loss.pcl_ks=50: YAML reads one number, not a list
        if isinstance(value, list | tuple):
            if all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                return tuple(value)
    elif isinstance(tp, type) and issubclass(tp, _Section):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return tp.from_mapping(value, "the config")
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}; got {value!r}", key=key)


def _item_of(text: str, item: Any) -> Any:
    """One part of a comma-separated list: an int when the list holds ints and it reads as one
    (else the text, which the type check then refuses, naming the key)."""
    if item is int:
        try:
            return int(text)
        except ValueError:
            return text
    return text


class _Section:
    """Base of the stage dataclasses: generic type checks, then the section's own range checks.

    ``SECTION`` is the dotted key of the section (``clusters``, ``clusters.kmeans``); a field
    whose type is another section nests it (YAML: a mapping, ``--set``: a longer dotted key).
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _check_value(self._key(f.name), getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)  # only normalises int -> float, list -> tuple
        self._validate()

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], source: str = "config") -> Any:
        """The section from a mapping of its fields; an unknown key fails, naming it."""
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{cls.SECTION}: expected a mapping in {source}; got {raw!r}", key=cls.SECTION
            )
        known = field_names(cls)
        for name in raw:
            if name not in known:
                key = f"{cls.SECTION}.{name}"
                raise ConfigError(
                    f"unknown key {key!r} in {source} (known: {', '.join(known)})", key=key
                )
        return cls(**raw)

    def _key(self, name: str) -> str:
        return f"{self.SECTION}.{name}"

    def _require(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            key = self._key(name)
            raise ConfigError(f"{key}: must be {rule}; got {getattr(self, name)!r}", key=key)

    def _validate(self) -> None:
        """Range checks of one section; overridden by each."""


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def nested_section(cls: type, name: str) -> type[_Section] | None:
    """The section class of field ``name`` of ``cls`` when that field nests one, else None."""
    tp = typing.get_type_hints(cls)[name]
    return tp if isinstance(tp, type) and issubclass(tp, _Section) else None
