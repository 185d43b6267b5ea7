"""The study's results page (Markdown) and its three plots, computed from the records alone.

Every number on the page comes from the records: accuracies with 3 decimals, bits with 2,
correlations with 3, so that the same records always give the same bytes. The plots are drawn
on a bare Agg canvas (no pyplot state) in matplotlib's default style, at a fixed size and dpi,
without the "Software" PNG field (PNG carries no date): the same records give the same PNG
bytes. The setting search is rendered from validation numbers only.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinfo_ray.study.records import ClaimSpec, StudyMeta, TrialRecord, plural
from clinfo_ray.study.stats import (
    ClaimResult,
    Correlation,
    JointFit,
    PairedDifference,
    directed_verdict,
    evaluate_claims,
    mean_sd,
    paired_difference,
    values_by_seed,
    verdict,
)

ACCURACY_PLOT = "accuracy_by_method.png"
MI_PLOT = "accuracy_vs_mi.png"
CE_PLOT = "accuracy_vs_conditional_entropy.png"
_FIGSIZE = (7.0, 4.5)
_DPI = 100
NONE = "–"  # a cell with no value


def write_report(
    records: Sequence[TrialRecord],
    claims: Sequence[ClaimSpec],
    meta: StudyMeta,
    out_dir: Path,
    page: Path,
    setting_records: Sequence[TrialRecord] = (),
) -> None:
    """The three plots in ``out_dir`` and the Markdown ``page`` linking them (relative to the
    page's folder). ``setting_records``: the setting search's runs (validation only)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page.parent.mkdir(parents=True, exist_ok=True)
    if not records:  # a setting search's own page: its table, no test numbers to plot
        sections = [
            _header(meta, setting_records),
            *meta.notes,
            _setting_section(setting_records, claims, meta),
        ]
        page.write_text("\n\n".join(s for s in sections if s) + "\n")
        return
    order = method_order(meta, records)
    results = evaluate_claims(records, claims, meta.metric)
    _plot_accuracy_by_method(out_dir / ACCURACY_PLOT, records, order, meta.metric)
    for name, key, label in (
        (MI_PLOT, "mutual_information_bits", "I(Z;T) of the clusters (bits)"),
        (CE_PLOT, "conditional_entropy_bits", "H(Z|T) of the clusters (bits)"),
    ):
        _plot_accuracy_against(out_dir / name, records, order, meta.metric, key, label)
    sections = [
        _header(meta, records),
        *meta.notes,
        _methods_section(records, order, meta),
        _claims_section(results, meta.metric),
        *(_correlation_section(r, meta.metric) for r in results if r.spec.kind == "correlation"),
        _figures_section(out_dir, page),
        _setting_section(setting_records, claims, meta),
    ]
    page.write_text("\n\n".join(s for s in sections if s) + "\n")


def method_order(meta: StudyMeta, records: Sequence[TrialRecord]) -> list[str]:
    """The methods in meta's order, then any other method of the records by name."""
    listed = [name for name, _ in meta.methods]
    return listed + sorted({r.method for r in records} - set(listed))


# -- formatting ------------------------------------------------------------------------------


def _acc(value: float) -> str:
    return f"{value:.3f}"


def _signed(value: float) -> str:
    return f"{round(value, 3) + 0.0:+.3f}"  # + 0.0 turns -0.0 into 0.0: never "-0.000"


def _bits(value: float) -> str:
    return f"{value:.2f}"


def _interval(low: float, high: float) -> str:
    return f"[{_signed(low)}, {_signed(high)}]"


def _spread(values: Sequence[float]) -> str:
    """mean ± sd, the mean alone for one value."""
    if not values:
        return NONE
    mean, sd = mean_sd(values)
    return _acc(mean) if sd is None else f"{_acc(mean)} ± {_acc(sd)}"


def _hms(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _metric_name(metric: str) -> str:
    return metric.replace("_top", " top-").replace("knn", "kNN")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join(
        "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in lines
    )


def _scores(records: Sequence[TrialRecord], split: str, key: str) -> list[float]:
    out = []
    for r in records:
        scores = r.val if split == "val" else r.test
        if scores is not None and key in scores:
            out.append(scores[key])
    return out


def _cluster_stat(records: Sequence[TrialRecord], key: str) -> list[float]:
    return [r.clusters[key] for r in records if r.clusters is not None and key in r.clusters]


def _mean_or_none(values: Sequence[float], fmt: Any) -> str:
    return fmt(mean_sd(values)[0]) if values else NONE


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


# -- the page's sections ---------------------------------------------------------------------


def _trials(meta: StudyMeta, records: Sequence[TrialRecord]) -> str:
    if meta.planned_trials > len(records):
        return (
            f"{len(records)} of the {meta.planned_trials} planned: **the study is still running**; "
            "every number below is from the trials done so far"
        )
    return str(len(records))


def _header(meta: StudyMeta, records: Sequence[TrialRecord]) -> str:
    seeds = ", ".join(str(s) for s in sorted({r.seed for r in records})) or NONE
    train = sum(r.train_seconds for r in records)
    evaluation = sum(r.eval_seconds for r in records)
    return "\n".join(
        [
            f"# Results: {meta.name}",
            "",
            "The command that produced these results:",
            "",
            "```",
            meta.command,
            "```",
            "",
            f"- Machine: {meta.machine}",
            f"- Date: {meta.date}",
            f"- Wall time: {_hms(meta.wall_seconds)} (summed over the command's invocations: a "
            "study resumed after an interruption counts each)",
            f"- The trials' own time, summed: training {_hms(train)} (the epochs), evaluation "
            f"{_hms(evaluation)}; the rest of "
            "the wall time starts each trial's workers and reads its data (trials run side by "
            "side can sum to more than the wall time)",
            f"- Seeds: {seeds}",
            f"- Trials: {_trials(meta, records)}",
            f"- Primary metric: {_metric_name(meta.metric)} (test split for the claims, "
            "validation split for every choice)",
        ]
    )


_METHOD_COLUMNS = (
    "method, seeds, test linear top-1, test kNN top-1, val linear top-1, val kNN top-1, "
    "clusters, I(Z;T) bits, H(Z|T) bits, probe weight decay"
)


def _methods_section(records: Sequence[TrialRecord], order: Sequence[str], meta: StudyMeta) -> str:
    described = dict(meta.methods)
    rows, about = [], []
    for method in order:
        mine = [r for r in records if r.method == method]
        loss = ", ".join(sorted({r.loss_method for r in mine})) or NONE
        clusters = ", ".join(sorted({r.cluster_method for r in mine})) or NONE
        about.append([method, described.get(method, ""), loss, clusters])
        decays = Counter(r.probe["weight_decay"] for r in mine if "weight_decay" in r.probe)
        # the most common choice; a tie goes to the smaller weight decay
        decay = min(decays, key=lambda d: (-decays[d], d)) if decays else None
        rows.append(
            [
                method,
                str(len({r.seed for r in mine})),
                _spread(_scores(mine, "test", "linear_top1")),
                _spread(_scores(mine, "test", "knn_top1")),
                _mean_or_none(_scores(mine, "val", "linear_top1"), _acc),
                _mean_or_none(_scores(mine, "val", "knn_top1"), _acc),
                _mean_or_none(_cluster_stat(mine, "num_clusters"), _count),
                _mean_or_none(_cluster_stat(mine, "mutual_information_bits"), _bits),
                _mean_or_none(_cluster_stat(mine, "conditional_entropy_bits"), _bits),
                NONE if decay is None else f"{decay:g}",
            ]
        )
    header = _METHOD_COLUMNS.split(", ")
    return "\n\n".join(
        [
            "## Methods",
            _table(["method", "what it is", "loss", "clusters"], about),
            "Per method, mean ± sd over seeds (validation and cluster columns: means; probe "
            "weight decay: the value chosen on validation most often).",
            _table(header, rows),
        ]
    )


def _difference_cell(difference: PairedDifference | None) -> str:
    if difference is None:
        return NONE
    return f"{_signed(difference.mean)} {_interval(difference.low, difference.high)}"


def _gap_cell(result: ClaimResult) -> str:
    spec = result.spec
    if not spec.reference:
        return NONE
    if result.gap is not None:
        return f"{result.gap:.2f}"
    lead = result.reference_lead
    if lead is None:
        return (
            f"undefined: {spec.reference} and {spec.worse} share fewer than 2 seeds, so "
            f"{spec.reference}'s lead has no interval"
        )
    return (
        f"undefined: {spec.reference}'s lead over {spec.worse} on test, "
        f"{_difference_cell(lead)}, is {verdict(lead.interval)}, so the ratio has no meaning"
    )


def _claim_row(result: ClaimResult, metric: str) -> list[str]:
    spec = result.spec
    if spec.kind == "correlation":
        compared = ", ".join(spec.methods)
        return [spec.id, compared, NONE, "see below", NONE, result.verdict, NONE, NONE]
    compared = f"{', '.join(spec.better)} vs {spec.worse}"
    if spec.reference:
        compared += f" (reference {spec.reference})"
    if result.error:
        return [spec.id, compared, *[NONE] * 3, f"{result.verdict}: {result.error}", NONE, NONE]
    val = ", ".join(f"{m} {_acc(v)}" for m, v in result.val_means.items())
    difference = result.difference
    assert difference is not None
    return [
        spec.id,
        compared,
        f"{result.chosen} (val {_metric_name(metric)}: {val})",
        _difference_cell(difference),
        str(difference.n),
        result.verdict,
        _gap_cell(result),
        _difference_cell(result.knn_difference),
    ]


def _claims_section(results: Sequence[ClaimResult], metric: str) -> str:
    if not results:
        return ""
    texts = "\n".join(f"- **Claim {r.spec.id}.** {r.spec.text}" for r in results)
    header = [
        *("claim", "compared", "chosen on validation"),
        f"test {_metric_name(metric)}: mean paired difference [95% CI]",
        *("n", "verdict", "gap closure", "test kNN top-1: difference [95% CI]"),
    ]
    explained = (
        "A paired claim compares, seed by seed on the test split, the candidate with the "
        "highest mean validation score against the baseline; the interval is the Student-t 95% "
        "interval over seeds. Supported: the interval lies above 0; not supported: below 0; "
        "else inconclusive at this budget. Gap closure: (chosen − baseline) / (reference − "
        "baseline) on the test means, when the reference's own paired lead over the baseline is "
        "supported."
    )
    lines = [_table(header, [_claim_row(r, metric) for r in results])]
    for r in results:
        if r.spec.kind == "paired" and r.spec.reference and not r.error:
            means = r.test_means
            lines.append(
                f"Claim {r.spec.id} gap closure: ({_acc(means[r.chosen])} − "
                f"{_acc(means[r.spec.worse])}) / ({_acc(means[r.spec.reference])} − "
                f"{_acc(means[r.spec.worse])}) = {_gap_cell(r)} (test means of "
                f"{r.chosen}, {r.spec.worse}, {r.spec.reference}; the ratio is given only when "
                f"{r.spec.reference}'s paired lead over {r.spec.worse} is supported)."
            )
    return "\n\n".join(["## Claims", texts, explained, *lines])


def _correlation_cell(corr: Correlation | None) -> str:
    if corr is None:
        return NONE
    shown = _signed(corr.r)
    if corr.low is not None and corr.high is not None:
        shown += f" {_interval(corr.low, corr.high)}"
    return shown


def _correlation_section(result: ClaimResult, metric: str) -> str:
    title = f"### Claim {result.spec.id}: test {_metric_name(metric)} against the clusters"
    if result.error:
        return f"{title}\n\n{result.verdict}: {result.error}"
    points = [[m, _bits(mi), _bits(ce), _acc(acc)] for m, mi, ce, acc in result.points]
    n = str(len(result.points))
    mi, ce = result.mutual_information, result.conditional_entropy
    rows = [
        ["I(Z;T)", "positive", _correlation_cell(mi), n, result.mutual_information_verdict],
        ["H(Z|T)", "negative", _correlation_cell(ce), n, result.conditional_entropy_verdict],
    ]
    return "\n\n".join(
        [
            title,
            "One point a method: its mean over seeds. Pearson r with a Fisher-z 95% interval "
            "(none below 4 methods); the claim is supported when both intervals exclude 0 on "
            "the expected side.",
            _table(
                ["method", "I(Z;T) bits", "H(Z|T) bits", f"test {_metric_name(metric)}"], points
            ),
            _table(["r of accuracy with", "expected", "r [95% CI]", "methods", "verdict"], rows),
            _joint_fit_text(result.joint),
        ]
    )


def _joint_fit_text(joint: JointFit | None) -> str:
    if joint is None:
        return "No fit on both at once (fewer than 4 methods, or I(Z;T) and H(Z|T) collinear)."
    (b_mi, b_ce), (i_mi, i_ce) = joint.slopes, joint.intervals
    return (
        f"Across these methods I(Z;T) and H(Z|T) correlate with each other (r = "
        f"{_signed(joint.r_predictors)}), so each r above also carries the other's effect. "
        "Holding the other fixed (least squares of accuracy on both, "
        f"{plural(joint.n - 3, 'degree')} of freedom; shown beside the claim, not deciding it): "
        f"{_signed(b_mi)} {_interval(*i_mi)} a bit of I(Z;T) (a rise expected: "
        f"{directed_verdict(i_mi, +1)}), {_signed(b_ce)} {_interval(*i_ce)} a bit of H(Z|T) "
        f"(a fall expected: {directed_verdict(i_ce, -1)})."
    )


def _figures_section(out_dir: Path, page: Path) -> str:
    lines = ["## Figures"]
    for name, caption in (
        (ACCURACY_PLOT, "test accuracy by method, mean ± sd over seeds"),
        (MI_PLOT, "test accuracy against I(Z;T), one point per run"),
        (CE_PLOT, "test accuracy against H(Z|T), one point per run"),
    ):
        link = Path(os.path.relpath(out_dir / name, page.parent)).as_posix()
        lines.append(f"![{caption}]({link})")
    return "\n\n".join(lines)


def _knn_difference(records: Sequence[TrialRecord], pair: tuple[str, str]) -> str:
    """The validation kNN top-1 difference of ``pair`` by seed, as a cell."""
    try:
        difference = paired_difference(
            values_by_seed(records, pair[0], "val", "knn_top1"),
            values_by_seed(records, pair[1], "val", "knn_top1"),
        )
    except ValueError:
        return NONE
    return _difference_cell(difference)


def _setting_section(
    setting_records: Sequence[TrialRecord], claims: Sequence[ClaimSpec], meta: StudyMeta
) -> str:
    """Per setting, the methods' mean validation metric and, seed by seed on validation,
    reference - worse of the first paired claim naming a reference (the study's), else better
    - worse of the first paired claim (a setting search's own)."""
    if not setting_records:
        return ""
    settings = list(dict.fromkeys(r.setting for r in setting_records))
    order = [
        m for m in method_order(meta, setting_records) if m in {r.method for r in setting_records}
    ]
    paired = [c for c in claims if c.kind == "paired"]
    pair = next(((c.reference, c.worse) for c in paired if c.reference), None)
    if pair is None and paired:  # a setting search's own claim: its first candidate vs worse
        pair = (paired[0].better[0], paired[0].worse)
    header = ["setting", *order]
    if pair is not None:
        header += [f"{pair[0]} − {pair[1]} [95% CI]", "n", "verdict", "kNN: same difference"]
    header.append("train s / trial")
    rows = []
    for setting in settings:
        mine = [r for r in setting_records if r.setting == setting]
        row = [setting or NONE]
        for method in order:
            row.append(
                _mean_or_none(
                    _scores([r for r in mine if r.method == method], "val", meta.metric), _acc
                )
            )
        if pair is not None:
            try:
                difference = paired_difference(
                    values_by_seed(mine, pair[0], "val", meta.metric),
                    values_by_seed(mine, pair[1], "val", meta.metric),
                )
            except ValueError as error:
                row += [f"not computed: {error}", NONE, NONE, NONE]
            else:
                row += [
                    _difference_cell(difference),
                    str(difference.n),
                    verdict(difference.interval),
                    _knn_difference(mine, pair),
                ]
        row.append(f"{mean_sd([r.train_seconds for r in mine])[0]:.0f}")
        rows.append(row)
    return "\n\n".join(
        [
            "## Setting search",
            f"Validation {_metric_name(meta.metric)} only (the test split is not read): the "
            "methods' means over seeds, and the paired difference over seeds with its Student-t "
            "95% interval.",
            _table(header, rows),
        ]
    )


# -- plots -----------------------------------------------------------------------------------


def _draw(path: Path, draw: Any, xlabel: str, ylabel: str, title: str) -> None:
    """One PNG: ``draw(ax)`` on a bare Agg figure in matplotlib's default style (a user's
    matplotlibrc must not change the bytes); draw returns False when it had nothing to show."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        figure = Figure(figsize=_FIGSIZE, dpi=_DPI)
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        if draw(ax):
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing to show", ha="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=_DPI, metadata={"Software": None})


def _plot_accuracy_by_method(
    path: Path, records: Sequence[TrialRecord], order: Sequence[str], metric: str
) -> None:
    shown = [m for m in order if _scores([r for r in records if r.method == m], "test", metric)]

    def draw(ax: Any) -> bool:
        for offset, key, marker in ((-0.1, metric, "o"), (0.1, "knn_top1", "s")):
            xs, means, sds = [], [], []
            for i, method in enumerate(shown):
                values = _scores([r for r in records if r.method == method], "test", key)
                if values:
                    mean, sd = mean_sd(values)
                    xs.append(i + offset)
                    means.append(mean)
                    sds.append(sd or 0.0)  # one seed: no error bar
            ax.errorbar(xs, means, yerr=sds, fmt=marker, capsize=4, label=_metric_name(key))
        ax.set_xticks(range(len(shown)), shown, rotation=20, ha="right")
        return bool(shown)

    title = "test accuracy by method (mean ± sd over seeds)"
    _draw(path, draw, "", "test accuracy", title)


def _plot_accuracy_against(
    path: Path,
    records: Sequence[TrialRecord],
    order: Sequence[str],
    metric: str,
    key: str,
    label: str,
) -> None:
    def draw(ax: Any) -> bool:
        drawn = False
        for i, method in enumerate(order):  # a method keeps its colour in every plot
            points = [
                (r.clusters[key], r.test[metric])
                for r in records
                if r.method == method
                and r.clusters is not None
                and key in r.clusters
                and r.test is not None
                and metric in r.test
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(xs, ys, color=f"C{i % 10}", label=method)
                drawn = True
        return drawn

    name = _metric_name(metric)
    _draw(path, draw, label, f"test {name}", f"test {name} against the clusters, one point a run")
