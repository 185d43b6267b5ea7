"""What a study is: a YAML file naming the methods, the seeds, the claims and the evaluation.

A study trains every (method, seed) pair of its grid on one base config and evaluates each
trained encoder once (:mod:`clinfo_ray.study.evaluate`). The file::

    study:
      name: study_cpu           # its folder: <run.output_dir>/study/NAME
      config: quickstart        # the base training config (a path or a bundled name)
      seeds: [0, 1, 2]
      metric: linear_top1       # the primary metric: linear_top1 or knn_top1
      evaluate_test: true       # false: a setting search, scored on the validation split only
      probe:                    # the linear probe's grid, chosen per trial by cross-validation
        weight_decays: [0.0, 1.0e-4, 1.0e-3]   # on the fitting rows (never the val rows)
        epochs: [100]
        folds: 3
    prepare: {...}              # optional: prepare's section, run when the dataset is missing
    study.setting_search: FILE  # optional: a setting search's results.jsonl shown on the page
    set: {data.dataset_dir: data/emoji4, optim.epochs: 30}   # every trial
    methods:
      simclr: {about: SimCLR, set: {loss.method: simclr}}
    settings:                   # optional: the grid is settings x methods x seeds
      w16-e30: {about: ..., set: {optim.epochs: 30}}
    claims:
      - {id: "1", text: ..., kind: paired, better: [a, b], worse: simclr, reference: supcon}
      - {id: "4a", text: ..., kind: series, methods: [supcon, split-m2, split-m4],
         axis: conditional_entropy_bits, expect: falls}   # or mutual_information_bits, rises
      - {id: "4d", text: ..., kind: description, methods: [a, b, c, d]}   # no verdict
    quick: {methods: [...], seeds: [0, 1], set: {optim.epochs: 5}}   # --quick
    notes: [a paragraph, ...]   # printed on the full grid's results page (--quick prints
                                # its own note instead: these describe the full study)
    extends: study_cpu          # optional: every section not written here comes from that
                                # study (``study:`` merged key by key)

A trial's config is the base config < the study's ``set`` < its setting's ``set`` < the
method's ``set`` < its seed (``run.seed``) < the quick grid's ``set`` (with ``--quick``) <
``--set``. Every (setting, method) config is built and checked when the file loads, so a bad
key fails in one line naming the file, line and key before Ray starts. The file is read by
:mod:`clinfo_ray.study.study_file`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinfo_ray.config import PrepareConfig, TrainConfig, apply_overrides
from clinfo_ray.config.loading import named_file
from clinfo_ray.study.records import ClaimSpec

STUDIES_DIR = Path(__file__).resolve().parent.parent / "configs" / "studies"
METRICS = ("linear_top1", "knn_top1")


TOP_KEYS = ("extends", "study", "prepare", "set", "settings", "methods", "claims", "quick", "notes")
STUDY_KEYS = ("name", "config", "seeds", "metric", "evaluate_test", "probe", "setting_search")
METHOD_KEYS = ("about", "set")
CLAIM_KEYS = ("id", "text", "kind", "better", "worse", "reference", "methods", "axis", "expect")
QUICK_KEYS = ("methods", "seeds", "set")


@dataclass(frozen=True)
class ProbeGrid:
    """The linear probe's settings, each scored by ``folds``-fold cross-validation on the
    fitting rows (never the validation rows); the best one is kept."""

    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2)
    epochs: tuple[int, ...] = (100,)
    folds: int = 3  # cross-validation folds of the fitting rows that choose the setting

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
            "probe": self.probe_dict(),
            "methods": {m.name: m.overrides for m in self.methods},
            "settings": {st.name: st.overrides for st in self.settings},
            "late": dict(self.late),
        }

    def probe_dict(self) -> dict[str, Any]:
        return {
            "weight_decays": list(self.probe.weight_decays),
            "epochs": list(self.probe.epochs),
            "folds": self.probe.folds,
        }

    def rules(self) -> dict[str, str]:
        """SHA-256 digests of what decides the study's verdicts: its claims, its probe grid and
        its methods (each one's overrides, settings included). Recorded when the study first
        reads its test split; a page written later under other rules says what changed."""
        parts = {
            "claims": [c.to_dict() for c in self.claims],
            "probe": self.probe_dict(),
            "methods": {
                "methods": {m.name: m.overrides for m in self.methods},
                "settings": {st.name: st.overrides for st in self.settings},
            },
        }
        return {
            name: hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()
            for name, part in parts.items()
        }


def study_path(name_or_path: str | Path) -> Path:
    """A study file: the path itself, or ``clinfo_ray/configs/studies/NAME.yaml``."""
    return named_file(name_or_path, STUDIES_DIR, "study")


def study_epochs(base: TrainConfig, late: Mapping[str, Any], method: Method) -> int:
    """The epochs a method trains for in the study (its own set, then the late overrides)."""
    return int({"optim.epochs": base.optim.epochs, **method.overrides, **late}["optim.epochs"])
