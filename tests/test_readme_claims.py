"""A README whose numbers and tables cannot rot: each is read from the file it names.

Every number the README cites with a file beside it is read from both files (``CLAIMS``: the
README's words with the numbers as groups, and the same groups computed from the file), and
every wall time it cites must be one of them; the tune table is its trials.csv, a default it
names is the config's, every config key it names exists, the security table's bindings and the
licence table are read from the files they name. (Its commands: tests/test_readme_commands.py.)
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import tomllib
from collections.abc import Callable
from typing import Any

import pytest

from clinfo_ray.commands.main import COMMANDS, _module
from clinfo_ray.config import PrepareConfig, TrainConfig
from clinfo_ray.data.write.sources import emoji
from clinfo_ray.study.study_file import load_study
from tests.doc_commands import README, ROOT, fenced_blocks

# -- the numbers the README cites, each beside the file it comes from --------------------------


def _wall(seconds: float) -> str:
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _published(name: str) -> Callable[[], tuple[str, ...]]:
    """The trial count and wall time of the study published in docs/study/NAME."""

    def found() -> tuple[str, ...]:
        folder = ROOT / "docs" / "study" / name
        trials = len((folder / "results.jsonl").read_text().splitlines())
        wall = json.loads((folder / "meta.json").read_text())["wall_seconds"]
        return str(trials), _wall(wall)

    return found


def _fmnist_verdicts() -> tuple[str, ...]:
    """The verdict of both claims on the Fashion-MNIST page, when they agree."""
    text = (ROOT / "docs/study/study_fmnist_cpu/results.md").read_text()
    verdicts = {
        re.search(
            rf"^\| {claim} \| kmeans-iter vs .* \| ([a-z ]+?)(?: at this budget)? \|$", text, re.M
        ).group(1)
        for claim in ("2", "2b")
    }
    return (verdicts.pop(),) if len(verdicts) == 1 else ("disagree",)


def _quick() -> tuple[str, ...]:
    study = load_study("study_cpu", quick=True)
    return str(len(study.methods)), str(len(study.seeds)), str(study.base.optim.epochs)


def _study_cpu() -> tuple[str, ...]:
    study = load_study("study_cpu")
    return str(len(study.methods)), str(len(study.seeds)), str(len(study.grid()))


def _page_has(path: str, pattern: str) -> Callable[[], tuple[str, ...]]:
    def found() -> tuple[str, ...]:
        match = re.search(pattern, (ROOT / path).read_text())
        assert match, f"{path}: no {pattern!r}"
        return match.groups()

    return found


SETTING_PAGE = "docs/study/setting_search/results.md"


def _cheaper() -> tuple[str, ...]:
    """How much less the chosen setting's trials took than the other tied one's (the last
    column of the page's table: seconds a trial)."""
    text = (ROOT / SETTING_PAGE).read_text()
    seconds = [
        float(re.search(rf"^\| {name} \|.*\| (\d+) \|$", text, re.M).group(1))
        for name in ("w16-e22-cat", "p24-e38-cat")
    ]
    return (str(round(100 * (1 - seconds[0] / seconds[1]))),)


def _pinned_ray() -> tuple[str, ...]:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray = next(p for p in pins if p.startswith("ray["))
    return (".".join(ray.split("==")[1].split(".")[:2]),)


# (the README's words with the numbers as groups, where they come from: the same groups)
CLAIMS: list[tuple[str, Callable[[], tuple[str, ...]]]] = [
    (
        r"`clinfo-ray study --config study_setting_cpu --out\s+docs/study/setting_search`, "
        r"(\d+) trials, (\dh\d\dm) here",
        _published("setting_search"),
    ),
    (
        r"`clinfo-ray study --config study_cpu --out\s+docs/study/study_cpu --page "
        r"docs/results.md`, (\d+) trials, "
        r"(\dh\d\dm) here",
        _published("study_cpu"),
    ),
    (
        r"`clinfo-ray study --config study_fmnist_cpu --out docs/study/study_fmnist_cpu`, "
        r"(\d+) trials,\s+(\dh\d\dm) here",
        _published("study_fmnist_cpu"),
    ),
    (r"claims 2 and 2b are (\w+) on test linear top-1", _fmnist_verdicts),
    (
        r"tie exactly \((\+0\.\d+)\)",
        _page_has(SETTING_PAGE, r"\| w16-e22-cat(?: \| \S+){2} \| (\S+) "),
    ),
    (r"(\d+) % cheaper", _cheaper),
    (r"--quick +# the (\d+) methods of claims 1-3, (\d+) seeds, (\d+) epochs", _quick),
    (r"(\d+) methods × (\d+) seeds = (\d+) trials", _study_cpu),
    (r"as Ray (\d+\.\d+) gives no way", _pinned_ray),
]


@pytest.mark.parametrize(("words", "source"), CLAIMS, ids=[c[0][:40] for c in CLAIMS])
def test_a_cited_number_is_the_one_its_file_holds(
    words: str, source: Callable[[], tuple[str, ...]]
) -> None:
    found = re.findall(words, README.read_text())
    assert len(found) == 1, f"the README says {words!r} {len(found)} times"
    said = found[0] if isinstance(found[0], tuple) else (found[0],)
    assert said == source(), f"README: {said}; its file: {source()}"


def test_every_wall_time_the_readme_cites_has_its_file() -> None:
    text = README.read_text()
    checked = "".join(m.group(0) for words, _ in CLAIMS for m in re.finditer(words, text))
    times = re.findall(r"\b\d+h\d+m(?:\d+s)?\b|\b\d+m\d+s\b", text)
    unsourced = [t for t in times if t not in checked]
    assert not unsourced, f"wall times with no file that records them: {unsourced}"


def test_the_readme_tune_table_is_its_trials_csv() -> None:
    folder = ROOT / "docs" / "tune_clusters_temperature"
    with (folder / "trials.csv").open(newline="") as handle:
        trials = {t["trial_id"]: t for t in csv.DictReader(handle)}
    block = next(b for _, b in fenced_blocks(README.read_text()) if b.startswith("trial "))
    rows = [line.split() for line in block.splitlines() if line[:1].isalnum() and "_0" in line]
    assert len(rows) == len(trials)
    validation = int(re.search(r"(\d+)\s+validation images", README.read_text()).group(1))
    for row in rows:
        best = row[1] == "*"
        trial_id, top_k, temperature, *rest = [w for w in row if w != "*"]
        status, epochs, final, top = " ".join(rest[:-3]), *rest[-3:]
        t = trials[trial_id]
        assert (top_k, status, epochs) == (t["clusters.top_k"], t["status"], t["epochs"])
        assert temperature == f"{float(t['loss.temperature']):.4g}"
        assert (final, top) == (f"{float(t['final']):.4f}", f"{float(t['best']):.4f}")
        assert best == (float(t["best"]) == max(float(x["best"]) for x in trials.values()))
        for score in (t["final"], t["best"]):  # a share of the validation images
            assert abs(float(score) * validation - round(float(score) * validation)) < 1e-6


def test_a_default_the_readme_names_is_the_configs() -> None:
    said = re.findall(r"`(\w+)\.(\w+)` \(default ([^)`\n]+)\)", README.read_text())
    # a run keeps only its last checkpoints: the README says how many, beside the key
    assert ("run", "checkpoints_to_keep") in {(s, k) for s, k, _ in said}
    for section, key, value in said:
        config = PrepareConfig() if section == "prepare" else getattr(TrainConfig(), section)
        assert str(getattr(config, key)) == value, f"{section}.{key}: README {value}"


def test_the_reproducibility_claim_is_the_one_tested() -> None:
    """tests/test_training.py repeats runs on 2 workers and tests/test_multinode.py places 2
    workers on one node or two; another number of workers is another global batch
    (docs/multinode.md), so the README may claim the same curve only for a given number."""
    text = " ".join(README.read_text().split())
    bullet = text.split("**Reproducible**", 1)[1].split(" - **", 1)[0]
    assert "for a given number of workers" in bullet and "any number of workers" not in bullet


def test_every_config_key_the_readme_names_exists() -> None:
    sections = "data|clusters|model|loss|optim|eval|run"
    named = set(re.findall(rf"`((?:{sections})\.[a-z_.]+)`", README.read_text()))
    keys = {k for k in named if not re.search(r"\.(py|json|jsonl|md|yaml)$", k)}  # files
    assert len(keys) > 20
    known = set(flatten(TrainConfig().to_dict()))
    assert not keys - known, f"not config keys: {sorted(keys - known)}"


def flatten(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for name, value in tree.items():
        keys.append(prefix + name)
        if isinstance(value, dict):
            keys += flatten(value, f"{prefix}{name}.")
    return keys


# -- the security table and the licence table, against their files ----------------------------


def markdown_rows(section: str) -> list[list[str]]:
    """The cells of every table row of one README section (## heading to the next)."""
    text = README.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in body.splitlines()]
    rows = [
        [c.strip() for c in r] for r in rows if len(r) > 2 and not r[0].strip().startswith("---")
    ]
    return rows[1:] if rows else rows


def test_each_deployment_binds_the_dashboard_where_the_readme_says() -> None:
    rows = [r for r in markdown_rows("Security") if r[-1].startswith("`")]
    files = {}
    for _where, listens, paths in rows:
        address = re.match(r"`([0-9.]+)`", listens).group(1)
        for path in re.findall(r"`([^`]+)`", paths):
            files[path] = address
            text = (ROOT / path).read_text()
            bound = re.findall(r"dashboard[-_]host[\"']?\s*[:=]\s*[\"']?([0-9.]+)", text)
            assert bound and set(bound) == {address}, f"{path}: {bound}, README: {address}"
    deploy = {f"deploy/{p.name}" for p in (ROOT / "deploy").glob("*.yaml")}
    assert deploy <= set(files), f"deployments the security table leaves out: {deploy - set(files)}"
    assert "clinfo_ray/commands/common.py" in files


def test_the_licence_table_is_what_prepare_states_when_it_fetches() -> None:
    rows = {r[0].strip("`"): r for r in markdown_rows("Data licences")}
    assert set(rows) == set(emoji.STYLES)
    for style, (_, package, terms) in rows.items():
        assert package == f"`emoji-datasource-{style}@{emoji.EMOJI_VERSION}`"
        assert terms == emoji.STYLE_TERMS[style]
    text = README.read_text().split("## Data licences\n", 1)[1]
    assert f"`{emoji.OPENMOJI_SPEC}`: {emoji.OPENMOJI_TERMS}" in text
    demo_styles = load_study("study_cpu").prepare.styles
    restricted = [s for s in demo_styles if s in emoji.RESTRICTED_STYLES]
    if restricted:  # the README says plainly that, and why, the demo uses them
        why = re.search(r"\*\*The demo's default styles are not all.*?(?:\n\n|\Z)", text, re.S)
        assert why and all(s in why.group(0) for s in restricted), restricted


def test_the_readme_names_trials_as_the_study_does() -> None:
    from clinfo_ray.study.run import trial_name

    text = README.read_text()
    seed: Any = "N"  # the README's placeholder for the seed
    assert f"`{trial_name('METHOD', seed)}`" in text
    assert f"`{trial_name('METHOD', seed, 'SETTING')}`" in text


def test_commands_without_address_are_the_ones_the_readme_names() -> None:
    without = set()
    for name in COMMANDS:
        parser = argparse.ArgumentParser()
        _module(name).add_arguments(parser)
        if "--address" not in parser.format_help():
            without.add(name)
    text = README.read_text()
    sentence = re.search(r"Every command that uses Ray joins(.*?)(?:\n\n|\n- )", text, re.S)
    assert sentence, "the README's sentence on --address is gone"
    named = set(re.findall(r"`(\w+)`", sentence.group(1).split(";", 1)[1]))
    assert without == named & set(COMMANDS), (without, named)
