"""Command-line flags generated from the config dataclasses, never restated by hand.

``add_section_flags(parser, root, "clusters")`` adds ``--k``, ``--top-k``, ``--kmeans-seed``,
... one flag per leaf of the section, typed and documented by the dataclass (the help is the
field's comment in the source, the default is the field's default). A flag given on the command
line becomes a ``--set`` override: precedence is defaults < ``--config`` file < flags < ``--set``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import re
import typing
from collections.abc import Sequence
from typing import Any

from clinfo_ray.config.section_base import _Section, field_names, nested_section

_DEST = "config_flag__"  # argparse dest prefix of a generated flag; the rest is the dotted key


def _help_of(cls: Any, name: str) -> str:
    return field_help(cls).get(name, "")


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Field name -> its comment in the class source (trailing, or the block just above)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    helps: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"^\s+(\w+): [^=]+=.*?(?:#\s*(.*))?$", line)
        if match and match.group(1) in field_names(cls):
            text = match.group(2) or " ".join(above)
            helps[match.group(1)] = text.strip()
        above = []
    return helps


def _metavar(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if origin is tuple:
        return "A,B"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if args else tp
    if typing.get_origin(tp) is typing.Literal:
        return _metavar(tp)
    return getattr(tp, "__name__", "VALUE").upper()


def _leaves(cls: type[_Section], prefix: str) -> list[tuple[str, str, Any, Any, str]]:
    """(flag name, dotted key, type, default, help) of every leaf of a section."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        inner = nested_section(cls, f.name)
        if inner is not None:
            for flag, key, tp, default, text in _leaves(inner, f"{prefix}.{f.name}"):
                rows.append((f"{f.name}-{flag}", key, tp, default, text))
            continue
        default = getattr(cls(), f.name)
        rows.append(
            (
                f.name.replace("_", "-"),
                f"{prefix}.{f.name}",
                hints[f.name],
                default,
                _help_of(cls, f.name),
            )
        )
    return rows


def add_section_flags(
    parser: argparse.ArgumentParser | Any,
    section: type[_Section],
    *,
    skip: Sequence[str] = (),
    rename: dict[str, str] | None = None,
    positional: Sequence[str] = (),
) -> None:
    """One flag per leaf of ``section`` (``skip``: field names left to other flags; ``rename``:
    field name -> flag name; ``positional``: fields taken as optional positional arguments)."""
    rename = rename or {}
    for flag, key, tp, default, text in _leaves(section, section.SECTION):
        name = key.split(".", 1)[1]
        if name in skip:
            continue
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{text} ({key}; default: {shown})" if text else f"{key} (default: {shown})"
        dest = _DEST + key.replace(".", "__")
        if name in positional:
            parser.add_argument(
                dest, nargs="?", default=argparse.SUPPRESS, metavar=_metavar(tp), help=help_text
            )
        elif tp is bool:
            parser.add_argument(
                f"--{rename.get(name, flag)}",
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{rename.get(name, flag)}",
                dest=dest,
                default=argparse.SUPPRESS,
                metavar=_metavar(tp),
                help=help_text,
            )


def add_config_arguments(
    parser: argparse.ArgumentParser,
    *,
    required: bool = False,
    config_help: str | None = None,
    set_example: str = "optim.epochs=10",
) -> None:
    """``--config FILE|NAME`` (``config_help``: the help, default: a training config, naming
    the bundled ones as they are today) and the repeatable ``--set dotted.key=value``."""
    from clinfo_ray.config import bundled_configs

    bundled = ", ".join(bundled_configs())
    parser.add_argument(
        "--config",
        required=required,
        metavar="FILE",
        help=config_help or f"YAML config: a path, or the name of a bundled one ({bundled})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config value by its dotted key, e.g. --set {set_example} "
        "(repeatable; wins over the file and the flags)",
    )


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The generated flags the user gave, as ``dotted.key=value`` items, before ``--set``'s."""
    items = []
    for dest, value in vars(args).items():
        if not dest.startswith(_DEST):
            continue
        key = dest[len(_DEST) :].replace("__", ".")
        if isinstance(value, bool):
            value = "true" if value else "false"
        items.append(f"{key}={value}")
    return [*items, *getattr(args, "overrides", [])]


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    """``--address``: the Ray cluster to join (the one policy: :func:`connect_ray`)."""
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (default: the one `ray job submit` or RAY_ADDRESS names, "
        "else a new local one with its dashboard on 127.0.0.1)",
    )
