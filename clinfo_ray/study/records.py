"""What a study keeps: one ``TrialRecord`` per trained and evaluated (method, seed), the claims
it tests and the facts about the run that the results page prints.

``results.jsonl`` holds one record a line, appended (and fsynced) as each trial finishes, so an
interrupted study keeps what it finished (a study in a bucket keeps each trial's record in a
file of its own instead: ``study.run.folder_records``). ``meta.json`` holds the ``StudyMeta``.
Accuracies are fractions in [0, 1]; information quantities are in bits.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from clinfo_ray.storage import location as loc
from clinfo_ray.storage.location import Location

RESULTS_FILE = "results.jsonl"
META_FILE = "meta.json"
# The evaluation protocol. 1: the probe setting chosen by the validation score it reports (that
# score the best of the grid), the claim's seeds and the test probe's size per comparison.
# 2 (issue 19): the probe setting chosen by cross-validation on the fitting rows, one probe
# scoring validation and test; one set of seeds per claim. A page never mixes protocols.
PROTOCOL = 2


@dataclass(frozen=True)
class TrialRecord:
    """One trained encoder of the study, evaluated once.

    val: {"knn_top1", "linear_top1"} on the validation split. test: {"knn_top1", "linear_top1",
    "linear_top5"}, None for a run never evaluated on test (the setting search); protocol 2:
    both scored once by the one probe whose setting cross-validation on the fitting rows chose.
    probe: that probe, {"weight_decay", "epochs", "train_top1", "cv_top1", "folds"}. clusters: the
    clusters the run trained with, {"num_clusters", "mutual_information_bits",
    "conditional_entropy_bits"}, None for SimCLR (every image its own cluster).
    """

    method: str  # the study's method name, e.g. "simclr", "tags-top8", "supcon"
    seed: int
    loss_method: str  # loss.method of the run
    cluster_method: str  # clusters.method of the run ("instance" for simclr)
    val: dict[str, float]
    test: dict[str, float] | None
    probe: dict[str, float]
    clusters: dict[str, float] | None
    epochs: int
    train_seconds: float
    eval_seconds: float
    trial_id: str = ""
    setting: str = ""  # the setting's name in the setting search; "" in the study proper
    # the evaluation protocol it ran under (PROTOCOL today; records without the key: 1)
    protocol: int = PROTOCOL

    def to_json(self) -> str:
        """One line of JSON, keys sorted; floats as Python writes them (``repr``, which reads
        back to the same float). A NaN or infinity raises ValueError: JSON has no such value."""
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> TrialRecord:
        """The record of one line of ``to_json``; ValueError naming a missing or unknown key."""
        return cls.from_dict(json.loads(line))

    @classmethod
    def from_dict(cls, data: Any) -> TrialRecord:
        """The record of ``to_json``'s object, parsed; ValueError as ``from_json``."""
        if not isinstance(data, dict):
            raise ValueError(f"a record is a JSON object, got {type(data).__name__}")
        _check_keys(data, cls)
        return cls(
            method=str(data["method"]),
            seed=int(data["seed"]),
            loss_method=str(data["loss_method"]),
            cluster_method=str(data["cluster_method"]),
            val=_floats(data["val"], "val"),
            test=None if data["test"] is None else _floats(data["test"], "test"),
            probe=_floats(data["probe"], "probe"),
            clusters=None if data["clusters"] is None else _floats(data["clusters"], "clusters"),
            epochs=int(data["epochs"]),
            train_seconds=float(data["train_seconds"]),
            eval_seconds=float(data["eval_seconds"]),
            trial_id=str(data.get("trial_id", "")),
            setting=str(data.get("setting", "")),
            protocol=int(data.get("protocol", 1)),
        )


def _check_keys(data: dict[str, Any], cls: type) -> None:
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING}
    missing = sorted(required - data.keys())
    unknown = sorted(data.keys() - names)
    if missing or unknown:
        raise ValueError(f"{cls.__name__}: missing keys {missing}, unknown keys {unknown}")


def _floats(value: Any, name: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object of numbers, got {value!r}")
    return {str(k): float(v) for k, v in value.items()}


def read_records(path: Location) -> list[TrialRecord]:
    """Every record of a results file (a local path or a URI) in file order ([] when the file
    does not exist; blank lines are skipped). A line that is not a record raises ValueError
    naming file and line."""
    if not loc.is_file(path):
        return []
    records = []
    for number, line in enumerate(loc.read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(TrialRecord.from_json(line))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}, line {number}: not a trial record ({error})") from error
    return records


def append_record(path: Path, record: TrialRecord) -> None:
    """Add one line to a local results file and force it to disk: a record once appended
    survives the process being killed right after. (An object in a bucket cannot be appended
    to: a study there keeps each trial's record in its own file, ``study.run``.)"""
    line = record.to_json() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


CLAIM_KINDS = ("paired", "series", "description")
# what a series moves, and the record key (TrialRecord.clusters) that measures it
SERIES_AXES = ("mutual_information_bits", "conditional_entropy_bits")


@dataclass(frozen=True)
class ClaimSpec:
    """One claim of the paper, as the study tests it.

    paired: the best of ``better`` (highest mean *validation* metric) against ``worse``, seed
    by seed on the test metric; with ``reference`` (the supervised method) also the gap
    closure (better - worse) / (reference - worse). series: ``methods`` are cluster sets that
    move one quantity (``axis``, a key of the records' ``clusters``) with the other held
    fixed; per seed, the least-squares slope of the test metric on that quantity across the
    methods; the claim expects its sign to be ``expect`` (+1: rises, -1: falls). description:
    ``methods``' mean test metric beside their I(Z;T) and H(Z|T), correlations shown, no
    verdict (a set of methods chosen by hand is not a sample that can decide a claim).
    """

    id: str
    text: str
    kind: Literal["paired", "series", "description"]
    better: tuple[str, ...] = ()
    worse: str = ""
    reference: str = ""
    methods: tuple[str, ...] = ()
    axis: str = ""
    expect: int = 0

    def __post_init__(self) -> None:
        if self.kind == "paired":
            if not self.better or not self.worse:
                raise ValueError(f"claim {self.id}: a paired claim needs better and worse")
            if self.worse in self.better:
                raise ValueError(f"claim {self.id}: worse {self.worse!r} is among better")
        elif self.kind in ("series", "description"):
            least = 2 if self.kind == "description" else 3
            if len(self.methods) < least:
                raise ValueError(
                    f"claim {self.id}: a {self.kind} needs at least {least} methods, "
                    f"got {list(self.methods)}"
                )
            bad_axis = self.axis not in SERIES_AXES or self.expect not in (1, -1)
            if self.kind == "series" and bad_axis:
                raise ValueError(
                    f"claim {self.id}: a series needs axis in {SERIES_AXES} and expect +1 or -1, "
                    f"got {self.axis!r}, {self.expect!r}"
                )
        else:
            raise ValueError(f"claim {self.id}: kind must be one of {CLAIM_KINDS}: {self.kind!r}")

    @property
    def named(self) -> tuple[str, ...]:
        """Every method the claim names, each once."""
        found = (*self.better, self.worse, self.reference, *self.methods)
        return tuple(dict.fromkeys(m for m in found if m))

    def to_dict(self) -> dict[str, Any]:
        """The claim as plain data (its rules' digest is computed from this)."""
        data = asdict(self)
        data["better"], data["methods"] = list(self.better), list(self.methods)
        return data


@dataclass(frozen=True)
class StudyMeta:
    """How the study ran: the page prints all of it."""

    name: str
    command: str  # the exact command that produced results.jsonl
    machine: str
    date: str
    wall_seconds: float
    metric: str = "linear_top1"  # the primary metric: test for claims, val for choices
    methods: tuple[tuple[str, str], ...] = ()  # (method, one-line description), display order
    notes: tuple[str, ...] = ()  # paragraphs printed verbatim
    planned_trials: int = 0  # the study's grid; more than the records: it is still running
    # {"first_test_read": {"date", "commit", "digests"}, "changes": [{"date", "commit",
    # "changed", "digests"}, ...]}: when the test split was first read under which rules
    # (spec.Study.rules), and every later change of them ({} until a test split is read)
    rules: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.wall_seconds) or self.wall_seconds < 0:
            raise ValueError(f"wall_seconds must be finite and >= 0, got {self.wall_seconds}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["methods"] = [list(pair) for pair in self.methods]
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyMeta:
        unknown = sorted(data.keys() - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"StudyMeta: unknown keys {unknown}")
        methods = tuple((str(name), str(text)) for name, text in data.get("methods", ()))
        return cls(
            name=str(data["name"]),
            command=str(data["command"]),
            machine=str(data["machine"]),
            date=str(data["date"]),
            wall_seconds=float(data["wall_seconds"]),
            metric=str(data.get("metric", "linear_top1")),
            methods=methods,
            notes=tuple(str(n) for n in data.get("notes", ())),
            planned_trials=int(data.get("planned_trials", 0)),
            rules=dict(data.get("rules", {})),
        )


def write_meta(path: Location, meta: StudyMeta) -> None:
    loc.write_text(path, json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n")


def read_meta(path: Location) -> StudyMeta:
    return StudyMeta.from_dict(json.loads(loc.read_text(path)))


def plural(n: int, word: str) -> str:
    """``1 seed``, ``2 seeds``: for the study's pages."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
