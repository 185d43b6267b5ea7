"""The study's results page (Markdown), computed from the records alone, and its plots.

Every number on the page comes from the records (:mod:`clinfo_ray.study.page_format` says how
each is written), so the same records always give the same bytes. The claims' sections are
:mod:`clinfo_ray.study.page_claims`; the plots :mod:`clinfo_ray.study.plots`. The setting search
is rendered from validation numbers only. A page never mixes evaluation protocols, and a page of
protocol-1 records says what that protocol got wrong. When the study's rules (claims, probe
grid, methods) changed after its test split was first read, the page lists each change.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from clinfo_ray.study.claims import evaluate_claims, values_by_seed
from clinfo_ray.study.intervals import mean_sd, paired_difference, verdict
from clinfo_ray.study.page_claims import (
    claims_section,
    description_section,
    difference_cell,
    series_section,
)
from clinfo_ray.study.page_format import (
    NONE,
    acc,
    bits,
    cluster_stat,
    count,
    hms,
    mean_or_none,
    method_order,
    metric_name,
    scores,
    spread,
    table,
)
from clinfo_ray.study.plots import (
    ACCURACY_PLOT,
    CE_PLOT,
    MI_PLOT,
    plot_accuracy_against,
    plot_accuracy_by_method,
)
from clinfo_ray.study.records import PROTOCOL, ClaimSpec, StudyMeta, TrialRecord

__all__ = ["ACCURACY_PLOT", "CE_PLOT", "MI_PLOT", "write_report"]

PROTOCOL_1 = (
    "**Protocol 1: superseded.** These trials were evaluated before issue 19's corrections: "
    'each trial\'s "val linear top-1" is the best of its probe grid scored on the same '
    "validation rows that chose it (an optimistic number); the test probe was sized by the "
    "test split's labels; a claim chose its candidate on all of its seeds but compared it on "
    "the shared ones. The numbers are kept as they were measured; the rerun under protocol "
    f"{PROTOCOL} replaces them."
)


def write_report(
    records: Sequence[TrialRecord],
    claims: Sequence[ClaimSpec],
    meta: StudyMeta,
    out_dir: Path,
    page: Path,
    setting_records: Sequence[TrialRecord] = (),
) -> None:
    """The plots in ``out_dir`` and the Markdown ``page`` linking them (relative to the
    page's folder). ``setting_records``: the setting search's runs (validation only).
    ValueError when the records (or the setting records) mix protocols."""
    protocols = {r.protocol for r in records} | {r.protocol for r in setting_records}
    if len(protocols) > 1:
        raise ValueError(f"the records mix evaluation protocols {sorted(protocols)}")
    banner = PROTOCOL_1 if protocols == {1} else ""
    out_dir.mkdir(parents=True, exist_ok=True)
    page.parent.mkdir(parents=True, exist_ok=True)
    if not records and (setting_records or meta.planned_trials == 0):
        # a setting search's own page: its table, no test numbers to plot
        sections = [
            _header(meta, setting_records),
            banner,
            rules_section(meta),
            *meta.notes,
            _setting_section(setting_records, claims, meta),
        ]
        page.write_text("\n\n".join(s for s in sections if s) + "\n")
        return
    order = method_order(meta, records)
    results = evaluate_claims(records, claims, meta.metric)
    plot_accuracy_by_method(out_dir / ACCURACY_PLOT, records, order, meta.metric)
    for name, key, label in (
        (MI_PLOT, "mutual_information_bits", "I(Z;T) of the clusters (bits)"),
        (CE_PLOT, "conditional_entropy_bits", "H(Z|T) of the clusters (bits)"),
    ):
        plot_accuracy_against(out_dir / name, records, order, meta.metric, key, label)
    detail = {"series": series_section, "description": description_section}
    sections = [
        _header(meta, records),
        banner,
        rules_section(meta),
        *meta.notes,
        _methods_section(records, order, meta),
        claims_section(results, meta.metric),
        *(detail[r.spec.kind](r, meta.metric) for r in results if r.spec.kind in detail),
        figures_section(out_dir, page),
        _setting_section(setting_records, claims, meta),
    ]
    page.write_text("\n\n".join(s for s in sections if s) + "\n")


def rules_section(meta: StudyMeta) -> str:
    """When the test split was first read and under which rules; every change of the rules
    recorded after that, or a line saying there was none."""
    first = meta.rules.get("first_test_read")
    if not first:
        return ""
    lines = [
        "## The rules and when they were fixed",
        f"The test split was first read on {first['date']} (code commit {first['commit']}), "
        "under the study's claims, probe grid and methods whose SHA-256 digests meta.json "
        "records.",
    ]
    changes = meta.rules.get("changes", [])
    if not changes:
        lines.append("None of them changed after that.")
    for change in changes:
        lines.append(
            f"- **Changed after the test split was read**: on {change['date']} (code commit "
            f"{change['commit']}) the study's {', '.join(change['changed'])} changed; the page "
            "is computed under the rules of that change."
        )
    return "\n\n".join(lines)


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
            f"- Wall time: {hms(meta.wall_seconds)} (summed over the command's invocations: a "
            "study resumed after an interruption counts each)",
            f"- The trials' own time, summed: training {hms(train)} (the epochs), evaluation "
            f"{hms(evaluation)}; the rest of "
            "the wall time starts each trial's workers and reads its data (trials run side by "
            "side can sum to more than the wall time)",
            f"- Seeds: {seeds}",
            f"- Trials: {_trials(meta, records)}",
            f"- Primary metric: {metric_name(meta.metric)} (test split for the claims, "
            "validation split for every choice among methods and settings)",
        ]
    )


_METHOD_COLUMNS = (
    "method, seeds, test linear top-1, test kNN top-1, val linear top-1, val kNN top-1, "
    "clusters, I(Z;T) bits, H(Z|T) bits, probe weight decay"
)


def _methods_section(records: Sequence[TrialRecord], order: Sequence[str], meta: StudyMeta) -> str:
    described = dict(meta.methods)
    retrieval = any(r.test is not None and "map_at_r" in r.test for r in records)
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
                spread(scores(mine, "test", "linear_top1")),
                spread(scores(mine, "test", "knn_top1")),
                *([mean_or_none(scores(mine, "test", "map_at_r"), acc)] if retrieval else []),
                mean_or_none(scores(mine, "val", "linear_top1"), acc),
                mean_or_none(scores(mine, "val", "knn_top1"), acc),
                mean_or_none(cluster_stat(mine, "num_clusters"), count),
                mean_or_none(cluster_stat(mine, "mutual_information_bits"), bits),
                mean_or_none(cluster_stat(mine, "conditional_entropy_bits"), bits),
                NONE if decay is None else f"{decay:g}",
            ]
        )
    header = _METHOD_COLUMNS.split(", ")
    if retrieval:  # records from before retrieval metrics have none
        header.insert(4, "test mAP@R")
    return "\n\n".join(
        [
            "## Methods",
            table(["method", "what it is", "loss", "clusters"], about),
            "Per method, mean ± sd over seeds (validation, retrieval and cluster columns: means; "
            + (
                "mAP@R: retrieval of the fitting rows by label, Musgrave et al. 2020; "
                if retrieval
                else ""
            )
            + "probe "
            "weight decay: the value its trials chose most often, under protocol 2 by "
            "cross-validation on the fitting rows, never on the validation rows it reports).",
            table(header, rows),
        ]
    )


def figures_section(out_dir: Path, page: Path) -> str:
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
    return difference_cell(difference)


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
                mean_or_none(
                    scores([r for r in mine if r.method == method], "val", meta.metric), acc
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
                    difference_cell(difference),
                    str(difference.n),
                    verdict(difference.interval),
                    _knn_difference(mine, pair),
                ]
        row.append(f"{mean_sd([r.train_seconds for r in mine])[0]:.0f}")
        rows.append(row)
    return "\n\n".join(
        [
            "## Setting search",
            f"Validation {metric_name(meta.metric)} only (the test split is not read): the "
            "methods' means over seeds, and the paired difference over seeds with its Student-t "
            "95% interval.",
            table(header, rows),
        ]
    )
