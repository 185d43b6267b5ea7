"""The results page's claims: the table of verdicts, each series' slopes and each description's
correlations, every number computed by :mod:`clinfo_ray.study.claims` from the records."""

from __future__ import annotations

from collections.abc import Sequence

from clinfo_ray.study.claims import ClaimResult
from clinfo_ray.study.intervals import Correlation, JointFit, PairedDifference, verdict
from clinfo_ray.study.page_format import NONE, acc, bits, interval, metric_name, signed, table
from clinfo_ray.study.records import plural

AXIS_NAMES = {"mutual_information_bits": "I(Z;T)", "conditional_entropy_bits": "H(Z|T)"}

RULES = (
    "Every claim uses one set of seeds: those that every method it names has (candidates, "
    "baseline, reference; a series' methods), and the choice, the differences, the reference's "
    "lead and the gap closure are all computed on them. A paired claim compares, seed by seed "
    "on the test split, the candidate with the highest mean validation score against the "
    "baseline; a series claim takes, seed by seed, the least-squares slope of test accuracy on "
    "its axis across its methods. Each interval is the Student-t 95% interval over seeds. "
    "Supported: the interval lies wholly on the paper's side of 0; not supported: wholly on the "
    "other side; else inconclusive at this budget. Gap closure: (chosen − baseline) / "
    "(reference − baseline) on the test means, given only when the reference's own paired lead "
    "over the baseline is supported."
)


def difference_cell(difference: PairedDifference | None) -> str:
    if difference is None:
        return NONE
    return f"{signed(difference.mean)} {interval(difference.low, difference.high)}"


def _gap_cell(result: ClaimResult) -> str:
    spec = result.spec
    if not spec.reference:
        return NONE
    if result.gap is not None:
        return f"{result.gap:.2f}"
    lead = result.reference_lead
    assert lead is not None
    return (
        f"undefined: {spec.reference}'s lead over {spec.worse} on test, "
        f"{difference_cell(lead)}, is {verdict(lead.interval)}, so the ratio has no meaning"
    )


def _seeds(result: ClaimResult) -> str:
    return ", ".join(map(str, result.seeds)) or NONE


def _claim_row(result: ClaimResult, metric: str) -> list[str]:
    spec = result.spec
    if spec.kind == "description":
        return [spec.id, ", ".join(spec.methods), NONE, "see below", _seeds(result), result.verdict]
    if spec.kind == "series":
        compared = f"{', '.join(spec.methods)}: slope on {AXIS_NAMES[spec.axis]}"
        expected = "rises" if spec.expect > 0 else "falls"
        if result.error:
            return [spec.id, compared, NONE, NONE, NONE, f"{result.verdict}: {result.error}"]
        return [
            spec.id,
            compared,
            f"expected: accuracy {expected}",
            f"{difference_cell(result.difference)} a bit",
            _seeds(result),
            result.verdict,
        ]
    compared = f"{', '.join(spec.better)} vs {spec.worse}"
    if spec.reference:
        compared += f" (reference {spec.reference})"
    if result.error:
        return [spec.id, compared, NONE, NONE, NONE, f"{result.verdict}: {result.error}"]
    val = ", ".join(f"{m} {acc(v)}" for m, v in result.val_means.items())
    return [
        spec.id,
        compared,
        f"{result.chosen} (val {metric_name(metric)}: {val})",
        difference_cell(result.difference),
        _seeds(result),
        result.verdict,
    ]


def claims_section(results: Sequence[ClaimResult], metric: str) -> str:
    if not results:
        return ""
    texts = "\n".join(f"- **Claim {r.spec.id}.** {r.spec.text}" for r in results)
    header = [
        *("claim", "compared", "chosen on validation / expected"),
        f"test {metric_name(metric)}: mean paired difference or slope [95% CI]",
        *("seeds", "verdict"),
    ]
    lines = [table(header, [_claim_row(r, metric) for r in results])]
    paired = [r for r in results if r.spec.kind == "paired" and not r.error]
    if paired:
        rows = [
            [
                r.spec.id,
                difference_cell(r.knn_difference),
                *(
                    [difference_cell(r.reference_lead), _gap_cell(r)]
                    if r.spec.reference
                    else [NONE, NONE]
                ),
            ]
            for r in paired
        ]
        lines.append(
            table(
                [
                    "claim",
                    "test kNN top-1: same difference [95% CI]",
                    "reference − baseline [95% CI]",
                    "gap closure",
                ],
                rows,
            )
        )
    for r in paired:
        if r.spec.reference and r.gap is not None:
            means = r.test_means
            lines.append(
                f"Claim {r.spec.id} gap closure: ({acc(means[r.chosen])} − "
                f"{acc(means[r.spec.worse])}) / ({acc(means[r.spec.reference])} − "
                f"{acc(means[r.spec.worse])}) = {_gap_cell(r)} (test means of "
                f"{r.chosen}, {r.spec.worse}, {r.spec.reference} on seeds {_seeds(r)})."
            )
    return "\n\n".join(["## Claims", texts, RULES, *lines])


def series_section(result: ClaimResult, metric: str) -> str:
    spec = result.spec
    axis = AXIS_NAMES[spec.axis]
    title = f"### Claim {spec.id}: test {metric_name(metric)} against {axis}, the other held"
    if result.error:
        return f"{title}\n\n{result.verdict}: {result.error}"
    other = "H(Z|T)" if axis == "I(Z;T)" else "I(Z;T)"
    seeds = list(result.seeds)
    rows = []
    for method in spec.methods:
        mine = {p.seed: p for p in result.series if p.method == method}
        rows.append(
            [
                method,
                *(f"{bits(mine[s].axis)} / {acc(mine[s].accuracy)}" for s in seeds),
                acc(result.test_means[method]),
            ]
        )
    rows.append(
        [
            f"slope (accuracy a bit of {axis})",
            *(signed(result.slopes[s]) for s in seeds),
            difference_cell(result.difference),
        ]
    )
    return "\n\n".join(
        [
            title,
            f"Each method's {axis} (bits) and test {metric_name(metric)} on each seed (its "
            f"clusters are drawn per seed; {other} is held by construction), the least-squares "
            "slope of accuracy on it across the methods seed by seed, and the slopes' mean with "
            "its Student-t 95% interval.",
            table(
                ["method", *(f"seed {s}: {axis} / accuracy" for s in seeds), "mean accuracy"],
                rows,
            ),
        ]
    )


def _correlation_cell(corr: Correlation | None) -> str:
    if corr is None:
        return NONE
    shown = signed(corr.r)
    if corr.low is not None and corr.high is not None:
        shown += f" {interval(corr.low, corr.high)}"
    return shown


def description_section(result: ClaimResult, metric: str) -> str:
    title = f"### Claim {result.spec.id}: test {metric_name(metric)} against the clusters"
    if result.error:
        return f"{title}\n\n{result.verdict}: {result.error}"
    points = [[m, bits(mi), bits(ce), acc(a)] for m, mi, ce, a in result.points]
    rows = [
        ["I(Z;T)", _correlation_cell(result.mutual_information)],
        ["H(Z|T)", _correlation_cell(result.conditional_entropy)],
    ]
    return "\n\n".join(
        [
            title,
            "A description, not a test: these cluster sets were chosen by hand and move I(Z;T) "
            "and H(Z|T) together, so no verdict comes from them (the series claims separate the "
            "two). One point a method: its mean over the claim's seeds; Pearson r with a "
            "Fisher-z interval (none below 4 methods).",
            table(["method", "I(Z;T) bits", "H(Z|T) bits", f"test {metric_name(metric)}"], points),
            table(["r of accuracy with", "r [95% CI]"], rows),
            _joint_fit_text(result.joint),
        ]
    )


def _joint_fit_text(joint: JointFit | None) -> str:
    if joint is None:
        return "No fit on both at once (fewer than 4 methods, or I(Z;T) and H(Z|T) collinear)."
    (b_mi, b_ce), (i_mi, i_ce) = joint.slopes, joint.intervals
    return (
        f"Across these methods I(Z;T) and H(Z|T) correlate with each other (r = "
        f"{signed(joint.r_predictors)}). Least squares of accuracy on both at once "
        f"({plural(joint.n - 3, 'degree')} of freedom): {signed(b_mi)} {interval(*i_mi)} a "
        f"bit of I(Z;T), {signed(b_ce)} {interval(*i_ce)} a bit of H(Z|T)."
    )
