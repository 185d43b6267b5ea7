"""Read and check a study file (its format: :mod:`clinfo_ray.study.spec`): every error names
the file, the line and the key, before Ray starts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from clinfo_ray.config import ConfigError, PrepareConfig, TrainConfig, apply_overrides, load_config
from clinfo_ray.config.loading import YamlLoader, line_of, yaml_error
from clinfo_ray.study.records import ClaimSpec, plural
from clinfo_ray.study.spec import (
    CLAIM_KEYS,
    METHOD_KEYS,
    METRICS,
    NO_SETTING,
    QUICK_KEYS,
    STUDY_KEYS,
    TOP_KEYS,
    Method,
    ProbeGrid,
    Study,
    study_epochs,
    study_path,
)

EXPECT = {"rises": 1, "falls": -1}


class _Reader:
    """Reads one study file; every error names the file, the line and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.text = path.read_text()
            self.raw = yaml.load(self.text, Loader=YamlLoader) or {}
        except OSError as err:
            raise ConfigError(f"cannot read study {path}: {err.strerror or err}") from err
        except yaml.YAMLError as err:
            raise yaml_error(path, err) from None
        if not isinstance(self.raw, dict):
            raise ConfigError(f"{path}: expected a mapping with a 'study' section")

    def fail(self, key: str, problem: str) -> ConfigError:
        line = line_of(self.text, key)
        where = f"{self.path}" + (f" line {line}" if line else "")
        return ConfigError(f"{key}: {problem} (in {where})", key=key)

    def mapping(self, value: Any, key: str, allowed: Sequence[str] | None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
        if allowed is not None:
            for name in value:
                if name not in allowed:
                    raise self.fail(
                        f"{key}.{name}".lstrip("."), f"unknown key (known: {', '.join(allowed)})"
                    )
        return value

    def seeds(self, value: Any, key: str) -> tuple[int, ...]:
        ok = isinstance(value, list) and value and all(type(s) is int for s in value)
        if not ok or len(set(value)) != len(value):
            raise self.fail(key, f"expected a non-empty list of distinct integers, got {value!r}")
        return tuple(value)

    def names(self, value: Any, key: str, known: Sequence[str]) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"expected a method name or a list of them, got {value!r}")
        for name in value:
            if name not in known:
                raise self.fail(key, f"no method {name!r} (methods: {', '.join(known)})")
        return tuple(value)

    def overrides(self, value: Any, key: str) -> dict[str, Any]:
        return dict(self.mapping(value, key, None))


def _checked(base: TrainConfig, overrides: Mapping[str, Any], key: str, reader: _Reader) -> Any:
    try:
        return apply_overrides(base, overrides, key)
    except ConfigError as err:
        inner = f"{key}.{err.key}" if err.key else key
        raise reader.fail(inner, str(err)) from None


def load_study(
    name_or_path: str | Path,
    cli: Mapping[str, Any] | None = None,
    *,
    quick: bool = False,
) -> Study:
    """Load and check a study. ``cli``: the command line's dotted ``--set`` values (they win
    over the study's and the methods'); ``quick``: the file's reduced ``quick`` grid."""
    path = study_path(name_or_path)
    r = _Reader(path)
    top = r.mapping(r.raw, "", TOP_KEYS)
    if top.get("extends") is not None:
        try:
            parent = _Reader(study_path(str(top["extends"])))
        except ConfigError as err:
            raise r.fail("extends", str(err)) from None
        if "extends" in parent.raw:
            raise r.fail("extends", f"{parent.path} extends another study: one level only")
        inherited = r.mapping(parent.raw, "", TOP_KEYS)
        head = {**(inherited.get("study") or {}), **(top.get("study") or {})}
        top = {**inherited, **top, "study": head}
    head = r.mapping(top.get("study"), "study", STUDY_KEYS)
    name = head.get("name") or path.stem
    if not isinstance(name, str) or "/" in name or name in (".", ".."):
        raise r.fail("study.name", f"a name without '/', got {name!r}")
    try:
        config = load_config(str(head.get("config", "quickstart")))
    except ConfigError as err:
        raise r.fail("study.config", str(err)) from None
    metric = head.get("metric", "linear_top1")
    if metric not in METRICS:
        raise r.fail("study.metric", f"one of {', '.join(METRICS)}, got {metric!r}")
    evaluate_test = head.get("evaluate_test", True)
    if not isinstance(evaluate_test, bool):
        raise r.fail("study.evaluate_test", f"true or false, got {evaluate_test!r}")
    probe = _probe(
        r, r.mapping(head.get("probe"), "study.probe", ("weight_decays", "epochs", "folds"))
    )
    seeds = r.seeds(head.get("seeds", [0, 1, 2]), "study.seeds")

    cli = dict(cli or {})
    quick_set: dict[str, Any] = {}
    q: dict[str, Any] = {}
    if quick:
        q = r.mapping(top.get("quick"), "quick", QUICK_KEYS)
        if not q:
            raise r.fail("quick", "--quick needs a 'quick' section in the study")
        quick_set = r.overrides(q.get("set"), "quick.set")
    late = {**quick_set, **cli}
    base = _checked(config, r.overrides(top.get("set"), "set"), "set", r)
    base = _checked(base, quick_set, "quick.set", r)
    base = _checked(base, cli, "--set", r)
    if base.data.val_fraction <= 0:
        raise r.fail("set.data.val_fraction", "a study chooses on the validation split: > 0")

    methods = _methods(r, base, top.get("methods"), "methods", late)
    if not methods:
        raise r.fail("methods", "a study needs at least one method")
    settings = _methods(r, base, top.get("settings"), "settings", late) or [NO_SETTING]
    for setting in settings:  # every pair's config is valid
        for method in methods:
            both = {**setting.overrides, **method.overrides, **late}
            _checked(
                base,
                both,
                f"settings.{setting.name}" if setting.name else f"methods.{method.name}.set",
                r,
            )
    known = [m.name for m in methods]
    claims = tuple(_claim(r, i, c, known) for i, c in enumerate(top.get("claims") or []))

    if quick:
        keep = r.names(q.get("methods", known), "quick.methods", known)
        methods = [m for m in methods if m.name in keep]
        seeds = r.seeds(q.get("seeds", list(seeds)), "quick.seeds")
        claims = tuple(quick_claim(c, keep) for c in claims if _claim_fits(c, keep))
        epochs = {study_epochs(base, quick_set, m) for m in methods}
        quick_note = (
            f"This is the study's --quick grid ({plural(len(methods), 'method')}, "
            f"{plural(len(seeds), 'seed')}, "
            f"{'/'.join(map(str, sorted(epochs)))} epochs): a check that the whole pipeline runs, "
            "not evidence about the claims; the verdicts below are computed as in the full "
            "study and mean nothing at this budget."
        )
        name = f"{name}-quick"

    prepare = None
    if top.get("prepare") is not None:
        try:
            prepare = PrepareConfig.from_mapping(
                r.mapping(top["prepare"], "prepare", None), "prepare"
            )
        except ConfigError as err:
            raise r.fail(f"prepare.{err.key or ''}".rstrip("."), str(err)) from None
    notes = top.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise r.fail("notes", "expected a list of paragraphs (strings)")
    if quick:  # the file's notes speak of the full grid's setting and results
        notes = [quick_note]
    return Study(
        path=path,
        name=name,
        base=base,
        seeds=seeds,
        metric=metric,
        evaluate_test=evaluate_test,
        probe=probe,
        methods=tuple(methods),
        claims=claims,
        notes=tuple(notes),
        prepare=prepare,
        late=late,
        settings=tuple(settings),
        setting_search=_setting_search(r, head.get("setting_search")),
    )


def _methods(
    r: _Reader, base: TrainConfig, raw: Any, section: str, late: Mapping[str, Any]
) -> list[Method]:
    """The methods (or settings) of a section, each one's config checked on its own."""
    found = []
    for name, spec in r.mapping(raw, section, None).items():
        key = f"{section}.{name}"
        if not isinstance(name, str) or not name or "/" in name:
            raise r.fail(key, "a name without '/'")
        spec = r.mapping(spec, key, METHOD_KEYS)
        overrides = r.overrides(spec.get("set"), f"{key}.set")
        _checked(base, {**overrides, **late}, f"{key}.set", r)
        found.append(Method(name, str(spec.get("about", "")), overrides))
    return found


def _setting_search(r: _Reader, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not value:
        raise r.fail("study.setting_search", f"a results.jsonl path, got {value!r}")
    return value


def _probe(r: _Reader, raw: dict[str, Any]) -> ProbeGrid:
    default = ProbeGrid()
    wds = raw.get("weight_decays", list(default.weight_decays))
    if not (
        isinstance(wds, list) and wds and all(isinstance(w, int | float) and w >= 0 for w in wds)
    ):
        raise r.fail("study.probe.weight_decays", f"a non-empty list of numbers >= 0, got {wds!r}")
    epochs = raw.get("epochs", list(default.epochs))
    if not (isinstance(epochs, list) and epochs and all(type(e) is int and e >= 1 for e in epochs)):
        raise r.fail("study.probe.epochs", f"a non-empty list of integers >= 1, got {epochs!r}")
    folds = raw.get("folds", default.folds)
    if type(folds) is not int or folds < 2:
        raise r.fail("study.probe.folds", f"an integer >= 2, got {folds!r}")
    return ProbeGrid(tuple(float(w) for w in wds), tuple(epochs), folds)


def _claim(r: _Reader, i: int, raw: Any, known: Sequence[str]) -> ClaimSpec:
    key = f"claims.{i}"
    c = r.mapping(raw, key, CLAIM_KEYS)
    kind = c.get("kind", "paired")
    if kind not in ("paired", "series", "description"):
        raise r.fail(f"{key}.kind", f"paired, series or description, got {kind!r}")
    for field in ("id", "text"):
        if not isinstance(c.get(field), str | int) or not str(c.get(field)):
            raise r.fail(f"{key}.{field}", "required")
    try:
        if kind == "paired":
            better = r.names(c.get("better"), f"{key}.better", known)
            (worse,) = r.names(c.get("worse"), f"{key}.worse", known)
            reference = (
                r.names(c["reference"], f"{key}.reference", known)[0] if c.get("reference") else ""
            )
            return ClaimSpec(str(c["id"]), str(c["text"]), "paired", better, worse, reference)
        methods = r.names(c.get("methods"), f"{key}.methods", known)
        if kind == "description":
            return ClaimSpec(str(c["id"]), str(c["text"]), "description", methods=methods)
        expect = c.get("expect")
        if expect not in EXPECT:
            raise r.fail(f"{key}.expect", f"rises or falls, got {expect!r}")
        return ClaimSpec(
            str(c["id"]),
            str(c["text"]),
            "series",
            methods=methods,
            axis=str(c.get("axis", "")),
            expect=EXPECT[expect],
        )
    except ValueError as err:  # e.g. the baseline among the candidates, a bad axis
        raise r.fail(key, str(err)) from None


def _claim_fits(claim: ClaimSpec, methods: Sequence[str]) -> bool:
    """A claim the quick grid can still test: a paired claim's baseline, reference and a
    candidate; a series' every method; a description's two or more."""
    if claim.kind == "description":
        return sum(m in methods for m in claim.methods) >= 2
    if claim.kind == "series":
        return all(m in methods for m in claim.methods)
    named = [claim.worse, *([claim.reference] if claim.reference else [])]
    return all(m in methods for m in named) and any(m in methods for m in claim.better)


def quick_claim(claim: ClaimSpec, methods: Sequence[str]) -> ClaimSpec:
    """The claim restricted to the methods a quick grid has."""
    if claim.kind == "description":
        return dataclasses.replace(claim, methods=tuple(m for m in claim.methods if m in methods))
    return dataclasses.replace(claim, better=tuple(m for m in claim.better if m in methods))
