"""The claims' rules: which seeds a claim compares, which candidate stands for it, and its
verdict. The arithmetic is :mod:`clinfo_ray.study.intervals`'.

Rules, each stated once here (the results page repeats them):

* **one set of seeds per claim**: a claim uses the seeds that every method it names has (its
  candidates, baseline and reference; a series' or a description's methods); the choice among
  candidates, the paired difference, the reference's lead and the gap closure are all computed
  on those seeds and no others;
* the unit of replication is the seed: one difference (or one slope) a seed, a Student-t 95%
  interval over them;
* when a claim names several candidates for the better side, the one with the highest mean
  *validation* metric over the claim's seeds stands for it (a tie: the first listed); the test
  split is never looked at to choose;
* the gap closure (chosen - baseline) / (reference - baseline) on the test means is given only
  when the reference's own paired lead over the baseline is supported;
* a series claim: per seed, the least-squares slope of the test metric on the series' axis
  (each method's own cluster statistic of that seed) across the series' methods; the claim is
  supported when the slopes' interval lies wholly on the expected side of 0;
* a description: the methods' mean test metric against their mean I(Z;T) and H(Z|T), with
  Pearson r, its Fisher-z interval and a joint fit shown; it carries no verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from clinfo_ray.study.intervals import (
    NOT_EVALUATED,
    SUPPORTED,
    Correlation,
    JointFit,
    PairedDifference,
    correlation,
    directed_verdict,
    joint_fit,
    least_squares_slope,
    mean_sd,
    paired_difference,
    verdict,
)
from clinfo_ray.study.records import ClaimSpec, TrialRecord

DESCRIBED = "described, no verdict"
INFORMATION_KEYS = ("mutual_information_bits", "conditional_entropy_bits")


def values_by_seed(
    records: Iterable[TrialRecord], method: str, split: str, metric: str
) -> dict[int, float]:
    """seed -> ``split`` ("val" or "test") ``metric`` of ``method``'s records. ValueError when
    the method has no record, a seed appears twice, or a record lacks the split or metric."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {split!r}")
    found: dict[int, float] = {}
    for record in records:
        if record.method != method:
            continue
        scores = record.val if split == "val" else record.test
        if scores is None or metric not in scores:
            raise ValueError(f"{method} seed {record.seed}: no {split} {metric}")
        if record.seed in found:
            raise ValueError(f"{method}: seed {record.seed} recorded twice")
        found[record.seed] = scores[metric]
    if not found:
        raise ValueError(f"no records of method {method!r}")
    return found


def claim_seeds(records: Sequence[TrialRecord], claim: ClaimSpec) -> tuple[int, ...]:
    """The seeds every method the claim names has (the claim's one set of seeds). ValueError
    naming a method with no record."""
    seeds: set[int] | None = None
    for method in claim.named:
        mine = {r.seed for r in records if r.method == method}
        if not mine:
            raise ValueError(f"no records of method {method!r}")
        seeds = mine if seeds is None else seeds & mine
    return tuple(sorted(seeds or ()))


def _on(values: dict[int, float], seeds: Sequence[int]) -> dict[int, float]:
    return {s: values[s] for s in seeds}


def validation_means(
    records: Sequence[TrialRecord], candidates: Sequence[str], metric: str, seeds: Sequence[int]
) -> dict[str, float]:
    """Each candidate's mean validation metric over ``seeds``."""
    return {
        c: mean_sd(_on(values_by_seed(records, c, "val", metric), seeds).values())[0]
        for c in candidates
    }


def choose_on_validation(
    records: Sequence[TrialRecord], candidates: Sequence[str], metric: str, seeds: Sequence[int]
) -> str:
    """The candidate with the highest mean val[metric] over ``seeds`` (a tie: the first
    listed). The test split is never read."""
    means = validation_means(records, candidates, metric, seeds)
    return max(candidates, key=lambda c: (means[c], -candidates.index(c)))


def gap_closure(better: float, worse: float, reference: float) -> float | None:
    """(better - worse) / (reference - worse): the share of the reference's lead that the
    better method recovers. None when the reference does not beat the worse method."""
    if reference - worse <= 0:
        return None
    return (better - worse) / (reference - worse)


@dataclass(frozen=True)
class SeriesPoint:
    """One method of a series on one seed: its axis value (bits) and its test metric."""

    method: str
    seed: int
    axis: float
    accuracy: float


@dataclass(frozen=True)
class ClaimResult:
    """A claim's outcome, on ``seeds`` (the claim's one set).

    paired: ``chosen`` (the candidate val chose, by ``val_means``), ``difference`` chosen -
    worse on the test metric and ``knn_difference`` on test kNN top-1, ``test_means`` of the
    methods compared, ``reference_lead`` reference - worse (None: no reference), ``gap`` the gap
    closure (None: no reference, or the reference's lead is not supported).
    series: ``slopes`` seed -> slope, ``difference`` their mean and interval (against 0),
    ``series`` every (method, seed) point.
    description: r of the methods' mean test metric with their mean I(Z;T) and H(Z|T), a
    joint fit, and ``points`` (method, mean I, mean H, mean metric).
    ``error``: why the claim could not be evaluated (verdict NOT_EVALUATED)."""

    spec: ClaimSpec
    verdict: str
    seeds: tuple[int, ...] = ()
    chosen: str = ""
    val_means: dict[str, float] = field(default_factory=dict)
    test_means: dict[str, float] = field(default_factory=dict)
    difference: PairedDifference | None = None
    knn_difference: PairedDifference | None = None
    reference_lead: PairedDifference | None = None
    gap: float | None = None
    slopes: dict[int, float] = field(default_factory=dict)
    series: tuple[SeriesPoint, ...] = ()
    mutual_information: Correlation | None = None
    conditional_entropy: Correlation | None = None
    points: tuple[tuple[str, float, float, float], ...] = ()
    joint: JointFit | None = None
    error: str = ""


def evaluate_claims(
    records: Sequence[TrialRecord], claims: Sequence[ClaimSpec], metric: str
) -> list[ClaimResult]:
    """One result a claim, in order. A claim the records cannot answer (a method or seed
    missing, too few points) gets NOT_EVALUATED and the reason, and the others go on."""
    results = []
    rule = {"paired": _paired_claim, "series": _series_claim, "description": _description}
    for claim in claims:
        try:
            seeds = claim_seeds(records, claim)
            if len(seeds) < 2 and claim.kind != "description":
                raise ValueError(
                    f"claim {claim.id}: {len(seeds)} seed(s) shared by all of "
                    f"{', '.join(claim.named)}; an interval needs 2"
                )
            if not seeds:
                raise ValueError(f"claim {claim.id}: no seed shared by all of its methods")
            results.append(rule[claim.kind](records, claim, metric, seeds))
        except ValueError as error:
            results.append(ClaimResult(claim, NOT_EVALUATED, error=str(error)))
    return results


def _paired_claim(
    records: Sequence[TrialRecord], claim: ClaimSpec, metric: str, seeds: tuple[int, ...]
) -> ClaimResult:
    val_means = validation_means(records, claim.better, metric, seeds)
    chosen = choose_on_validation(records, claim.better, metric, seeds)
    compared = [chosen, claim.worse, *([claim.reference] if claim.reference else [])]
    test = {m: _on(values_by_seed(records, m, "test", metric), seeds) for m in compared}
    difference = paired_difference(test[chosen], test[claim.worse])
    try:
        knn = paired_difference(
            _on(values_by_seed(records, chosen, "test", "knn_top1"), seeds),
            _on(values_by_seed(records, claim.worse, "test", "knn_top1"), seeds),
        )
    except ValueError:
        knn = None  # shown beside the claim, never decides it
    test_means = {m: mean_sd(v.values())[0] for m, v in test.items()}
    gap = lead = None
    if claim.reference:
        lead = paired_difference(test[claim.reference], test[claim.worse])
        if verdict(lead.interval) == SUPPORTED:
            gap = gap_closure(
                test_means[chosen], test_means[claim.worse], test_means[claim.reference]
            )
    return ClaimResult(
        claim,
        verdict(difference.interval),
        seeds=seeds,
        chosen=chosen,
        val_means=val_means,
        test_means=test_means,
        difference=difference,
        knn_difference=knn,
        reference_lead=lead,
        gap=gap,
    )


def _statistic(records: Sequence[TrialRecord], method: str, seed: int, key: str) -> float:
    for r in records:
        if r.method == method and r.seed == seed:
            if r.clusters is None or key not in r.clusters:
                raise ValueError(f"{method} seed {seed}: no cluster statistic {key}")
            return r.clusters[key]
    raise ValueError(f"no record of {method} seed {seed}")


def _series_claim(
    records: Sequence[TrialRecord], claim: ClaimSpec, metric: str, seeds: tuple[int, ...]
) -> ClaimResult:
    points, slopes = [], {}
    accuracy = {m: values_by_seed(records, m, "test", metric) for m in claim.methods}
    for seed in seeds:
        mine = [
            SeriesPoint(m, seed, _statistic(records, m, seed, claim.axis), accuracy[m][seed])
            for m in claim.methods
        ]
        points += mine
        slopes[seed] = least_squares_slope([p.axis for p in mine], [p.accuracy for p in mine])
    difference = paired_difference(slopes, dict.fromkeys(slopes, 0.0))
    return ClaimResult(
        claim,
        directed_verdict(difference.interval, claim.expect),
        seeds=seeds,
        difference=difference,
        slopes=slopes,
        series=tuple(points),
        test_means={m: mean_sd(_on(accuracy[m], seeds).values())[0] for m in claim.methods},
    )


def _description(
    records: Sequence[TrialRecord], claim: ClaimSpec, metric: str, seeds: tuple[int, ...]
) -> ClaimResult:
    points = []
    for method in claim.methods:
        accuracy = mean_sd(_on(values_by_seed(records, method, "test", metric), seeds).values())[0]
        information, leftover = (
            mean_sd(_statistic(records, method, s, key) for s in seeds)[0]
            for key in INFORMATION_KEYS
        )
        points.append((method, information, leftover, accuracy))
    accuracies = [p[3] for p in points]
    mi: Correlation | None
    ce: Correlation | None
    try:
        mi = correlation([p[1] for p in points], accuracies)
        ce = correlation([p[2] for p in points], accuracies)
    except ValueError:
        mi = ce = None  # fewer than 3 methods, or a constant column: the table alone
    try:
        joint = joint_fit([p[1] for p in points], [p[2] for p in points], accuracies)
    except ValueError:
        joint = None
    return ClaimResult(
        claim,
        DESCRIBED,
        seeds=seeds,
        joint=joint,
        mutual_information=mi,
        conditional_entropy=ce,
        points=tuple(points),
    )
