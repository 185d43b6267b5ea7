"""The study's raw records (results.jsonl, meta.json) and its results page.

The page is checked against numbers worked out by hand from a small synthetic study (3 seeds ×
5 methods): this tests the page's arithmetic and formatting, not any training.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from clinfo_ray.study.records import (
    ClaimSpec,
    StudyMeta,
    TrialRecord,
    append_record,
    read_meta,
    read_records,
    write_meta,
)
from clinfo_ray.study.report import ACCURACY_PLOT, CE_PLOT, MI_PLOT, write_report
from tests.study_data import STUDY_TABLE as STUDY
from tests.study_data import study_records, trial

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T2 = 4.302652729749464  # t(0.975, 2): three seeds


CLAIMS = [
    ClaimSpec("1", "Tags beat SimCLR.", "paired", ("tags-top8", "tags-top32"), "simclr", "supcon"),
    ClaimSpec("2", "k-means beats SimCLR.", "paired", ("kmeans-64",), "simclr"),
    ClaimSpec("3", "k-means beats SupCon.", "paired", ("kmeans-64",), "supcon"),
    ClaimSpec(
        "4",
        "Accuracy beside I(Z;T) and H(Z|T).",
        "description",
        methods=("tags-top8", "tags-top32", "kmeans-64", "supcon"),
    ),
]
META = StudyMeta(
    name="synthetic",
    command="clinfo-ray study --study paper",
    machine="2 CPUs",
    date="2026-01-02",
    wall_seconds=3723.4,
    methods=tuple((m, f"the {m} method") for m in STUDY),
    notes=("A note printed as it is.",),
)


def setting_records() -> list[TrialRecord]:
    """Two settings; the test numbers (0.987) must never reach the page."""
    values = {
        "tau0.1": {"simclr": (0.40, 0.42, 0.44), "supcon": (0.50, 0.51, 0.55)},
        "tau0.2": {"simclr": (0.40, 0.42, 0.44), "supcon": (0.43, 0.39, 0.47)},
    }
    return [
        trial(method, seed, v, 0.987, None, setting=setting)
        for setting, by_method in values.items()
        for method, vals in by_method.items()
        for seed, v in enumerate(vals)
    ]


def pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def write(root: Path) -> tuple[Path, Path]:
    out_dir, page = root / "assets" / "study", root / "docs" / "results.md"
    write_report(study_records(), CLAIMS, META, out_dir, page, setting_records())
    return out_dir, page


def test_the_page_shows_the_hand_computed_numbers(tmp_path: Path) -> None:
    _, page = write(tmp_path)
    text = page.read_text()
    half = T2 * 0.02 / math.sqrt(3) * math.sqrt(3)  # sd √0.0012 = 0.02·√3
    assert f"{0.01 - half:.3f}" == "-0.076" and f"{0.01 + half:.3f}" == "0.096"
    expected = [
        "clinfo-ray study --study paper",
        "Wall time: 1:02:03",
        "training 0:03:08 (the epochs), evaluation 0:00:49",  # 15 trials x 12.5 s and 3.25 s
        "Seeds: 0, 1, 2",
        "A note printed as it is.",
        # simclr: 0.50, 0.52, 0.54; tags-top8: 0.60, 0.61, 0.65 (sd √0.0007)
        "| simclr | 3 | 0.520 ± 0.020 | 0.470 ± 0.020 | 0.510 | 0.410 | – | – | – | 0.0001 |",
        "| tags-top8 | 3 | 0.620 ± 0.026 | 0.570 ± 0.026 | 0.630 | 0.530 | 8 | 1.00 | 3.00 |",
        # claim 1: differences 0.10, 0.09, 0.11; half-width t(0.975, 2)·0.01/√3 = 0.0248
        "tags-top8 (val linear top-1: tags-top8 0.630, tags-top32 0.610)",
        "| +0.100 [+0.075, +0.125] | 0, 1, 2 | supported |",
        # claim 1's kNN difference, supcon's lead (0.20, 0.20, 0.20) and the gap closure
        "| 1 | +0.100 [+0.075, +0.125] | +0.200 [+0.200, +0.200] | 0.50 |",
        "(0.620 − 0.520) / (0.720 − 0.520) = 0.50",
        # claim 2: +0.03, -0.03, +0.03
        "| +0.010 [-0.076, +0.096] | 0, 1, 2 | inconclusive at this budget |",
        # claim 3: -0.17, -0.23, -0.17
        "| -0.190 [-0.276, -0.104] | 0, 1, 2 | not supported |",
    ]
    for snippet in expected:
        assert snippet in text, snippet
    assert "tags-top32 (val" not in text  # test-best, never chosen


def test_the_description_shows_r_of_the_method_means_and_no_verdict(tmp_path: Path) -> None:
    _, page = write(tmp_path)
    text = page.read_text()
    accuracy = [0.62, 0.70, 0.53, 0.72]  # tags-top8, tags-top32, kmeans-64, supcon
    r_mi = pearson([1.0, 2.0, 0.5, 3.0], accuracy)
    r_ce = pearson([3.0, 2.0, 4.0, 0.0], accuracy)
    z = 1.959963984540054  # n - 3 = 1
    for name, r in (("I(Z;T)", r_mi), ("H(Z\\|T)", r_ce)):
        low, high = math.tanh(math.atanh(r) - z), math.tanh(math.atanh(r) + z)
        assert f"| {name} | " in text
        assert f"| {name} | {r:+.3f} [{low:+.3f}, {high:+.3f}] |" in text, (name, r, low, high)
    assert "| tags-top32 | 2.00 | 2.00 | 0.700 |" in text
    assert (
        "| 4 | tags-top8, tags-top32, kmeans-64, supcon | – | see below | 0, 1, 2 | described"
        in text
    )
    # both at once (numpy's least squares on these 4 points): slopes +0.140 a bit of I(Z;T),
    # +0.044 a bit of H(Z|T); I and H correlate r = -0.990; 1 degree of freedom
    assert "correlate with each other (r = -0.990)" in text
    assert "Least squares of accuracy on both at once (1 degree of freedom)" in text
    assert re.search(r"\+0\.140 \[[-+.0-9]+, [-+.0-9]+\] a bit of I\(Z;T\)", text)
    assert re.search(r"\+0\.044 \[[-+.0-9]+, [-+.0-9]+\] a bit of H\(Z\|T\)\.", text)


def test_the_setting_search_uses_validation_only(tmp_path: Path) -> None:
    _, page = write(tmp_path)
    text = page.read_text()
    section = text[text.index("## Setting search") :]
    assert "| setting | simclr | supcon | supcon − simclr [95% CI] | n | verdict |" in section
    assert "| tau0.1 | 0.420 | 0.520 | +0.100 [+0.075, +0.125] | 3 | supported |" in section
    assert "| tau0.2 | 0.420 | 0.430 | +0.010 [-0.076, +0.096] | 3 | inconclusive" in section
    assert "0.987" not in text


def test_an_undefined_gap_closure_is_said_so(tmp_path: Path) -> None:
    records = [
        trial(m, s, 0.5, acc, None)
        for m, accs in {"simclr": (0.60, 0.62, 0.64), "tags": (0.70, 0.71, 0.75)}.items()
        for s, acc in enumerate(accs)
    ] + [trial("supcon", s, 0.5, acc, (1.0, 0.0)) for s, acc in enumerate((0.59, 0.60, 0.61))]
    claim = ClaimSpec("1", "Tags beat SimCLR.", "paired", ("tags",), "simclr", "supcon")
    write_report(records, [claim], META, tmp_path / "out", tmp_path / "page.md")
    text = (tmp_path / "page.md").read_text()
    # supcon - simclr: -0.01, -0.02, -0.03; half-width t(0.975, 2)·0.01/√3 = 0.0248
    lead = "-0.020 [-0.045, +0.005], is inconclusive at this budget"
    assert f"undefined: supcon's lead over simclr on test, {lead}, so the ratio" in text


def test_the_images_exist_and_the_links_resolve(tmp_path: Path) -> None:
    out_dir, page = write(tmp_path)
    for name in (ACCURACY_PLOT, MI_PLOT, CE_PLOT):
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert b"Software" not in data and b"Matplotlib" not in data
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text())
    assert sorted(Path(link).name for link in links) == sorted([ACCURACY_PLOT, MI_PLOT, CE_PLOT])
    for link in links:
        assert not Path(link).is_absolute() and link.startswith("../assets/study/")
        assert (page.parent / link).resolve() == (out_dir / Path(link).name).resolve()


def test_the_report_is_byte_identical_when_written_again(tmp_path: Path) -> None:
    out_one, page_one = write(tmp_path / "one")
    out_two, page_two = write(tmp_path / "two")
    assert page_one.read_bytes() == page_two.read_bytes()
    for name in (ACCURACY_PLOT, MI_PLOT, CE_PLOT):
        assert (out_one / name).read_bytes() == (out_two / name).read_bytes(), name


# -- the raw records --------------------------------------------------------------------------


def test_a_record_round_trips_through_one_json_line() -> None:
    record = trial("tags-top8", 3, 0.1 + 0.2, 0.7, (1.5, 2.5), setting="tau0.1")
    line = record.to_json()
    assert "\n" not in line and "0.30000000000000004" in line  # floats as repr
    assert line.index('"clusters"') < line.index('"epochs"') < line.index('"method"')
    assert TrialRecord.from_json(line) == record
    assert TrialRecord.from_json(trial("simclr", 0, 0.5, None, None).to_json()).test is None
    with pytest.raises(ValueError, match=r"missing keys \['seed'\]"):
        TrialRecord.from_json(line.replace('"seed"', '"sed"'))
    with pytest.raises(ValueError, match="JSON"):
        trial("a", 0, math.nan, 0.5, None).to_json()


def test_append_and_read_records(tmp_path: Path) -> None:
    path = tmp_path / "study" / "results.jsonl"
    assert read_records(path) == []
    first, second = trial("simclr", 0, 0.5, 0.5, None), trial("supcon", 1, 0.6, 0.6, (1.0, 0.0))
    append_record(path, first)
    append_record(path, second)
    assert read_records(path) == [first, second]
    with open(path, "a") as handle:
        handle.write('{"method": "cut sh')  # a line cut short
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}, line 3"):
        read_records(path)


def test_meta_round_trips_and_claims_are_checked(tmp_path: Path) -> None:
    write_meta(tmp_path / "meta.json", META)
    assert read_meta(tmp_path / "meta.json") == META
    with pytest.raises(ValueError, match="better and worse"):
        ClaimSpec("1", "x", "paired", ("a",))
    with pytest.raises(ValueError, match="at least 2 methods"):
        ClaimSpec("4", "x", "description", methods=("a",))
    with pytest.raises(ValueError, match="wall_seconds"):
        StudyMeta("n", "c", "m", "d", -1.0)


def test_records_stats_and_report_import_neither_torch_nor_ray() -> None:
    import ast

    import clinfo_ray.study

    folder = Path(clinfo_ray.study.__file__).parent
    names = ("records.py", "intervals.py", "claims.py", "report.py", "page_claims.py", "rules.py")
    for name in (*names, "page_format.py", "plots.py"):
        tree = ast.parse((folder / name).read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        heavy = [m for m in imported if m.split(".")[0] in ("torch", "ray", "scipy")]
        assert not heavy, f"{name} imports {heavy}"


def test_a_study_still_running_says_how_many_trials_are_done(tmp_path: Path) -> None:
    records = study_records()
    running = dataclasses.replace(META, planned_trials=len(records) + 5)
    page = tmp_path / "results.md"
    write_report(records, CLAIMS, running, tmp_path / "out", page)
    assert f"Trials: {len(records)} of the {len(records) + 5} planned" in page.read_text()
    assert "still running" in page.read_text()
    write_report(
        records, CLAIMS, dataclasses.replace(META, planned_trials=len(records)), tmp_path, page
    )
    assert f"- Trials: {len(records)}\n" in page.read_text()  # complete: the count alone


def test_a_claim_whose_methods_share_one_seed_waits_and_says_why(tmp_path: Path) -> None:
    """A study published while it runs: the reference has one seed so far. One set of seeds per
    claim: the claim is not evaluated on two seeds and its gap on one."""
    records = [
        trial(m, s, 0.5, acc, None)
        for m, accs in {"simclr": (0.60, 0.62, 0.64), "tags": (0.70, 0.71, 0.75)}.items()
        for s, acc in enumerate(accs)
    ] + [trial("supcon", 0, 0.5, 0.80, (1.0, 0.0))]
    claim = ClaimSpec("1", "Tags beat SimCLR.", "paired", ("tags",), "simclr", "supcon")
    write_report(records, [claim], META, tmp_path / "out", tmp_path / "page.md")
    text = (tmp_path / "page.md").read_text()
    assert "not evaluated: claim 1: 1 seed(s) shared by all of tags, simclr, supcon" in text


def test_a_series_section_shows_each_seeds_points_and_slope(tmp_path: Path) -> None:
    records = [
        trial(m, s, 0.5, 0.70 - 0.01 * h - 0.001 * s, (3.0, h))
        for s in (0, 1, 2)
        for m, h in (("supcon", 0.0), ("split-m2", 1.0), ("split-m4", 2.0))
    ]
    claim = ClaimSpec(
        "4a",
        "Accuracy falls with H(Z|T).",
        "series",
        methods=("supcon", "split-m2", "split-m4"),
        axis="conditional_entropy_bits",
        expect=-1,
    )
    write_report(records, [claim], META, tmp_path / "out", tmp_path / "page.md")
    text = (tmp_path / "page.md").read_text()
    assert "### Claim 4a: test linear top-1 against H(Z|T), the other held" in text
    assert "| split-m4 | 2.00 / 0.680 | 2.00 / 0.679 | 2.00 / 0.678 | 0.679 |" in text
    # the slope is -0.010 on every seed: an interval of zero width, below 0
    assert "| -0.010 | -0.010 | -0.010 | -0.010 [-0.010, -0.010] |" in text
    assert "| -0.010 [-0.010, -0.010] a bit | 0, 1, 2 | supported |" in text


def test_a_page_never_mixes_protocols_and_protocol_1_says_what_it_got_wrong(
    tmp_path: Path,
) -> None:
    old = [dataclasses.replace(r, protocol=1) for r in study_records()]
    write_report(old, CLAIMS, META, tmp_path / "out", tmp_path / "page.md")
    assert "**Protocol 1: superseded.**" in (tmp_path / "page.md").read_text()
    write_report(study_records(), CLAIMS, META, tmp_path / "out", tmp_path / "new.md")
    assert "Protocol 1" not in (tmp_path / "new.md").read_text()
    with pytest.raises(ValueError, match=r"mix evaluation protocols \[1, 2\]"):
        write_report([*old[:3], *study_records()[3:]], CLAIMS, META, tmp_path, tmp_path / "x.md")
    line = old[0].to_json().replace(', "protocol": 1', "")
    assert TrialRecord.from_json(line).protocol == 1  # records from before the key: protocol 1


def test_the_rules_section_lists_each_change_after_the_first_test_read(tmp_path: Path) -> None:
    first = {"date": "2026-12-06", "commit": "abc", "digests": {"claims": "1", "probe": "2"}}
    change = {"date": "2026-12-09", "commit": "def", "changed": ["claims"], "digests": {}}
    meta = dataclasses.replace(META, rules={"first_test_read": first, "changes": [change]})
    write_report(study_records(), CLAIMS, meta, tmp_path / "out", tmp_path / "page.md")
    text = (tmp_path / "page.md").read_text()
    assert "The test split was first read on 2026-12-06 (code commit abc)" in text
    assert "on 2026-12-09 (code commit def) the study's claims changed" in text
    unchanged = dataclasses.replace(META, rules={"first_test_read": first, "changes": []})
    write_report(study_records(), CLAIMS, unchanged, tmp_path / "out", tmp_path / "page.md")
    assert "None of them changed after that." in (tmp_path / "page.md").read_text()


def test_the_methods_table_shows_test_map_at_r_when_the_records_have_it(tmp_path: Path) -> None:
    records = [
        dataclasses.replace(r, test={**(r.test or {}), "map_at_r": 0.25 + 0.01 * r.seed})
        for r in study_records()
    ]
    write_report(records, CLAIMS, META, tmp_path / "out", tmp_path / "page.md")
    text = (tmp_path / "page.md").read_text()
    assert "| method | seeds | test linear top-1 | test kNN top-1 | test mAP@R |" in text
    assert "| simclr | 3 | 0.520 ± 0.020 | 0.470 ± 0.020 | 0.260 |" in text
    write_report(study_records(), CLAIMS, META, tmp_path / "out", tmp_path / "old.md")
    assert "mAP@R" not in (tmp_path / "old.md").read_text()
