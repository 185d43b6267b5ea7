"""The results pages committed under docs/ are what ``clinfo-ray study --report-only`` writes
from the raw files committed beside them, with today's report code and study files (no Ray, no
training): a change to either that is not published fails here, not on a reader's screen.

The Markdown must match byte for byte. The plots must be PNGs of the committed pictures' size:
their bytes depend on matplotlib's version, which the package does not pin.
"""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest

from clinfo_ray.commands.main import main
from clinfo_ray.study.plots import ACCURACY_PLOT, CE_PLOT, MI_PLOT

ROOT = Path(__file__).resolve().parent.parent
RAW = ("results.jsonl", "meta.json", "setting_search.jsonl")

# (study, --quick, the folder of its raw files, its page: "" for the folder's results.md), as
# the README's commands publish them
PUBLISHED: list[tuple[str, bool, str, str]] = [
    ("study_setting_cpu", False, "docs/study/setting_search", ""),
    ("study_cpu", False, "docs/study/study_cpu", "docs/results.md"),
    ("study_fmnist_cpu", False, "docs/study/study_fmnist_cpu", ""),
]
ARCHIVE = ROOT / "docs" / "study" / "archive" / "protocol1"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.mark.parametrize("study, quick, out, page", PUBLISHED, ids=lambda v: str(v))
def test_a_published_page_is_what_report_only_writes_from_its_raw_files(
    tmp_path: Path, study: str, quick: bool, out: str, page: str
) -> None:
    page = page or f"{out}/results.md"
    committed_out, committed_page = ROOT / out, ROOT / page
    assert (committed_out / "results.jsonl").is_file() and committed_page.is_file()
    new_out, new_page = tmp_path / out, tmp_path / page  # the same layout: the same links
    new_out.mkdir(parents=True)
    for name in RAW:
        if (committed_out / name).is_file():
            shutil.copy(committed_out / name, new_out / name)
    argv = ["study", "--config", study, "--out", str(new_out), "--page", str(new_page)]
    assert main([*argv, *(["--quick"] if quick else []), "--report-only"]) == 0
    assert new_page.read_text() == committed_page.read_text(), (
        f"{page} is stale: rerun the README's --report-only command for {study}"
    )
    plots = [p for p in (ACCURACY_PLOT, MI_PLOT, CE_PLOT) if (committed_out / p).is_file()]
    for name in plots:
        assert _png_size(new_out / name) == _png_size(committed_out / name), name
    assert sorted(p.name for p in new_out.glob("*.png")) == sorted(plots)


def test_every_archived_protocol_1_page_says_so_and_the_false_sentence_is_corrected() -> None:
    pages = sorted(ARCHIVE.glob("*/results.md"))
    assert [p.parent.name for p in pages] == [
        "setting_search",
        "study_cpu",
        "study_cpu_quick",
        "study_fmnist_cpu",
    ]
    for page in pages:
        assert page.read_text().startswith("> **Archived: protocol 1, superseded**"), page
        assert (page.parent / "results.jsonl").is_file()
    study_cpu = (ARCHIVE / "study_cpu" / "results.md").read_text()
    assert "none changed after. **[Correction, issue 19: this sentence is false." in study_cpu
    for link in re.findall(r"\]\(([^)#]+)\)", "".join(p.read_text() for p in pages)):
        if "://" not in link:
            assert any((p.parent / link).exists() for p in pages), link
