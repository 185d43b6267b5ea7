"""How the study's pages write numbers and tables: accuracies with 3 decimals, bits with 2,
signed differences that never read "-0.000", so that the same records give the same bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clinfo_ray.study.intervals import mean_sd
from clinfo_ray.study.records import StudyMeta, TrialRecord

NONE = "–"  # a cell with no value


def method_order(meta: StudyMeta, records: Sequence[TrialRecord]) -> list[str]:
    """The methods in meta's order, then any other method of the records by name."""
    listed = [name for name, _ in meta.methods]
    return listed + sorted({r.method for r in records} - set(listed))


def acc(value: float) -> str:
    return f"{value:.3f}"


def signed(value: float) -> str:
    return f"{round(value, 3) + 0.0:+.3f}"  # + 0.0 turns -0.0 into 0.0: never "-0.000"


def bits(value: float) -> str:
    return f"{value:.2f}"


def interval(low: float, high: float) -> str:
    return f"[{signed(low)}, {signed(high)}]"


def spread(values: Sequence[float]) -> str:
    """mean ± sd, the mean alone for one value."""
    if not values:
        return NONE
    mean, sd = mean_sd(values)
    return acc(mean) if sd is None else f"{acc(mean)} ± {acc(sd)}"


def hms(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def metric_name(metric: str) -> str:
    return metric.replace("_top", " top-").replace("knn", "kNN")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join(
        "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in lines
    )


def scores(records: Sequence[TrialRecord], split: str, key: str) -> list[float]:
    out = []
    for r in records:
        scores = r.val if split == "val" else r.test
        if scores is not None and key in scores:
            out.append(scores[key])
    return out


def cluster_stat(records: Sequence[TrialRecord], key: str) -> list[float]:
    return [r.clusters[key] for r in records if r.clusters is not None and key in r.clusters]


def mean_or_none(values: Sequence[float], fmt: Any) -> str:
    return fmt(mean_sd(values)[0]) if values else NONE


def count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
