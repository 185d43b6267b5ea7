"""What a study is: a YAML file naming the methods, the seeds, the claims and the evaluation.

A study trains every (method, seed) pair of its grid on one base config and evaluates each
trained encoder once (:mod:`clinfo_ray.study.evaluate`). The file::

    study:
      name: study_cpu           # its folder: <run.output_dir>/study/NAME
      config: quickstart        # the base training config (a path or a bundled name)
      seeds: [0, 1, 2]
      metric: linear_top1       # the primary metric: linear_top1 or knn_top1
      evaluate_test: true       # false: a setting search, scored on the validation split only
      probe:                    # the linear probe's grid, chosen per trial on the val split
        weight_decays: [0.0, 1.0e-4, 1.0e-3]
        epochs: [100]
    prepare: {...}              # optional: prepare's section, run when the dataset is missing
    study.setting_search: FILE  # optional: a setting search's results.jsonl shown on the page
    set: {data.dataset_dir: data/emoji4, optim.epochs: 30}   # every trial
    methods:
      simclr: {about: SimCLR, set: {loss.method: simclr}}
    settings:                   # optional: the grid is settings x methods x seeds
      w16-e30: {about: ..., set: {optim.epochs: 30}}
    claims:
      - {id: "1", text: ..., kind: paired, better: [a, b], worse: simclr, reference: supcon}
      - {id: "4", text: ..., kind: correlation, methods: [a, b, c, d]}
    quick: {methods: [...], seeds: [0, 1], set: {optim.epochs: 5}}   # --quick
    notes: [a paragraph, ...]   # printed on the full grid's results page (--quick prints
                                # its own note instead: these describe the full study)
    extends: study_cpu          # optional: every section not written here comes from that
                                # study (``study:`` merged key by key)

A trial's config is the base config < the study's ``set`` < its setting's ``set`` < the
method's ``set`` < its seed (``run.seed``) < the quick grid's ``set`` (with ``--quick``) <
``--set``. Every (setting, method) config is built and checked when the file loads, so a bad
key fails in one line naming the file, line and key before Ray starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clinfo_ray.config import (
    ConfigError,
    PrepareConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)
from clinfo_ray.config.loading import YamlLoader, line_of, named_file, yaml_error
from clinfo_ray.study.records import ClaimSpec, plural

STUDIES_DIR = Path(__file__).resolve().parent.parent / "configs" / "studies"
METRICS = ("linear_top1", "knn_top1")


TOP_KEYS = ("extends", "study", "prepare", "set", "settings", "methods", "claims", "quick", "notes")
STUDY_KEYS = ("name", "config", "seeds", "metric", "evaluate_test", "probe", "setting_search")
METHOD_KEYS = ("about", "set")
CLAIM_KEYS = ("id", "text", "kind", "better", "worse", "reference", "methods")
QUICK_KEYS = ("methods", "seeds", "set")


@dataclass(frozen=True)
class ProbeGrid:
    """The linear probe's settings tried on the validation split (the best one is kept)."""

    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2)
    epochs: tuple[int, ...] = (100,)

    def settings(self) -> list[tuple[float, int]]:
        """(weight decay, epochs) pairs in the order tried: ties go to the first."""
        return [(wd, ep) for ep in self.epochs for wd in self.weight_decays]


@dataclass(frozen=True)
class Method:
    """A method, or a setting (the same shape): a name, a line about it, its overrides."""

    name: str
    about: str
    overrides: dict[str, Any]  # dotted key -> value


NO_SETTING = Method("", "", {})


@dataclass(frozen=True)
class Study:
    """A loaded, checked study. ``base``: the base config with the study's ``set`` (and the
    command line's ``--set``) applied; each method's trial config is :meth:`trial_config`."""

    path: Path
    name: str
    base: TrainConfig
    seeds: tuple[int, ...]
    metric: str
    evaluate_test: bool
    probe: ProbeGrid
    methods: tuple[Method, ...]
    settings: tuple[Method, ...]  # (NO_SETTING,) when the study has no settings axis
    claims: tuple[ClaimSpec, ...]
    notes: tuple[str, ...]
    prepare: PrepareConfig | None
    # applied after the method's own: the quick grid's `set`, then the command line's `--set`
    late: dict[str, Any] = dataclasses.field(default_factory=dict)
    setting_search: str = ""  # a setting search's results.jsonl, shown on the page

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)

    def setting(self, name: str | None) -> Method:
        """A setting by name; None: the first (the only one of a study without settings)."""
        return next(s for s in self.settings if name is None or s.name == name)

    def trial_overrides(self, method: str, seed: int, setting: str | None = None) -> dict[str, Any]:
        """The dotted overrides of one trial on top of :attr:`base`: its setting's, the
        method's, its seed, then :attr:`late` (the quick grid's and the command line's win)."""
        own = {**self.setting(setting).overrides, **self.method(method).overrides}
        return {**own, "run.seed": seed, **self.late}

    def trial_config(self, method: str, seed: int, setting: str | None = None) -> TrainConfig:
        source = f"study method {method!r}, seed {seed}" + (
            f", setting {setting}" if setting else ""
        )
        return apply_overrides(self.base, self.trial_overrides(method, seed, setting), source)

    def grid(self) -> list[dict[str, Any]]:
        """Every (setting, method, seed) trial, setting-major then method-major."""
        return [
            {"setting": st.name, "method": m.name, "seed": s}
            for st in self.settings
            for m in self.methods
            for s in self.seeds
        ]

    def describe(self) -> dict[str, Any]:
        """What makes the study the same study (recorded in its folder; a rerun must match)."""
        return {
            "name": self.name,
            "base": self.base.to_dict(),
            "seeds": list(self.seeds),
            "metric": self.metric,
            "evaluate_test": self.evaluate_test,
            "probe": {k: list(v) for k, v in dataclasses.asdict(self.probe).items()},
            "methods": {m.name: m.overrides for m in self.methods},
            "settings": {st.name: st.overrides for st in self.settings},
            "late": dict(self.late),
        }


def study_path(name_or_path: str | Path) -> Path:
    """A study file: the path itself, or ``clinfo_ray/configs/studies/NAME.yaml``."""
    return named_file(name_or_path, STUDIES_DIR, "study")


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
    probe = _probe(r, r.mapping(head.get("probe"), "study.probe", ("weight_decays", "epochs")))
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


def study_epochs(base: TrainConfig, late: Mapping[str, Any], method: Method) -> int:
    """The epochs a method trains for in the study (its own set, then the late overrides)."""
    return int({"optim.epochs": base.optim.epochs, **method.overrides, **late}["optim.epochs"])


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
    return ProbeGrid(tuple(float(w) for w in wds), tuple(epochs))


def _claim(r: _Reader, i: int, raw: Any, known: Sequence[str]) -> ClaimSpec:
    key = f"claims.{i}"
    c = r.mapping(raw, key, CLAIM_KEYS)
    kind = c.get("kind", "paired")
    if kind not in ("paired", "correlation"):
        raise r.fail(f"{key}.kind", f"paired or correlation, got {kind!r}")
    for field in ("id", "text"):
        if not isinstance(c.get(field), str | int) or not str(c.get(field)):
            raise r.fail(f"{key}.{field}", "required")
    if kind == "paired":
        better = r.names(c.get("better"), f"{key}.better", known)
        (worse,) = r.names(c.get("worse"), f"{key}.worse", known)
        reference = (
            r.names(c["reference"], f"{key}.reference", known)[0] if c.get("reference") else ""
        )
        try:
            return ClaimSpec(str(c["id"]), str(c["text"]), "paired", better, worse, reference)
        except ValueError as err:  # e.g. the baseline among the candidates
            raise r.fail(key, str(err)) from None
    methods = r.names(c.get("methods"), f"{key}.methods", known)
    if len(methods) < 2:
        raise r.fail(f"{key}.methods", "a correlation needs at least 2 methods")
    return ClaimSpec(str(c["id"]), str(c["text"]), "correlation", methods=methods)


def _claim_fits(claim: ClaimSpec, methods: Sequence[str]) -> bool:
    """A claim the quick grid can still test: its methods are in it (for a correlation, >= 2)."""
    if claim.kind == "correlation":
        return sum(m in methods for m in claim.methods) >= 2
    named = [claim.worse, *([claim.reference] if claim.reference else [])]
    return all(m in methods for m in named) and any(m in methods for m in claim.better)


def quick_claim(claim: ClaimSpec, methods: Sequence[str]) -> ClaimSpec:
    """The claim restricted to the methods a quick grid has."""
    if claim.kind == "correlation":
        return dataclasses.replace(claim, methods=tuple(m for m in claim.methods if m in methods))
    return dataclasses.replace(claim, better=tuple(m for m in claim.better if m in methods))
