"""A study file: loaded and checked before Ray starts (no Ray here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clinfo_ray.config import ConfigError
from clinfo_ray.study.evaluate import trial_encoder_share
from clinfo_ray.study.spec import STUDIES_DIR
from clinfo_ray.study.study_file import load_study
from tests.study_data import STUDY_FILE as STUDY

SHIPPED = sorted(STUDIES_DIR.glob("*.yaml"))


def _write(tmp_path: Path, extra: str = "", text: str | None = None) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(text if text is not None else STUDY.format(extra=extra))
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_the_shipped_studies_load_with_every_method_and_claim(path: Path) -> None:
    study = load_study(path.stem)  # by name
    assert study.path == path and len(study.methods) >= 2 and len(study.seeds) >= 2
    for method in study.methods:
        cfg = study.trial_config(method.name, study.seeds[-1])
        assert cfg.run.seed == study.seeds[-1]
        for key, value in method.overrides.items():
            section, _, leaf = key.partition(".")
            assert getattr(getattr(cfg, section), leaf) == value, key
    names = {m.name for m in study.methods}
    for claim in study.claims:
        assert set(claim.better) | {claim.worse} | set(claim.methods) <= names | {""}
    quick = load_study(path.stem, quick=True)
    assert quick.name == f"{study.name}-quick"
    assert len(quick.grid()) < len(study.grid())


def test_a_trial_config_is_base_then_study_then_method_then_seed_then_command_line(
    tmp_path: Path,
) -> None:
    study = load_study(_write(tmp_path), {"optim.lr": 0.05})
    tags = study.trial_config("tags", 1)
    assert (tags.loss.method, tags.cluster_method, tags.run.seed) == ("clinfonce", "tags", 1)
    assert tags.optim.epochs == 30  # the method's set wins over the study's
    assert study.trial_config("simclr", 0).optim.epochs == 20  # the study's set
    assert tags.optim.lr == 0.05 and tags.model.cnn_width == 16  # --set; the quickstart's
    assert study.grid() == [
        {"setting": "", "method": m, "seed": s}
        for m in ("simclr", "tags", "supcon")
        for s in (0, 1)
    ]
    assert study.probe.settings() == [(0.0, 50), (1e-3, 50)]
    assert [c.kind for c in study.claims] == ["paired", "description"]


def test_quick_keeps_its_methods_seeds_and_claims_and_its_set_wins_over_the_methods(
    tmp_path: Path,
) -> None:
    study = load_study(_write(tmp_path), quick=True)
    assert study.name == "small-quick"
    assert [(t["method"], t["seed"]) for t in study.grid()] == [("simclr", 0), ("tags", 0)]
    assert study.trial_config("tags", 0).optim.epochs == 2  # over the method's 30
    assert [c.id for c in study.claims] == []  # claim 1 needs supcon, claim 2 two methods


def test_the_notes_are_the_full_grids_and_quick_prints_its_own(tmp_path: Path) -> None:
    path = _write(tmp_path, extra='notes: ["Trained at width 16; SupCon ties SimCLR."]')
    assert load_study(path).notes == ("Trained at width 16; SupCon ties SimCLR.",)
    (quick_note,) = load_study(path, quick=True).notes
    assert "SupCon ties" not in quick_note and "quick" in quick_note.lower()


def test_a_rerun_is_recognised_by_its_description(tmp_path: Path) -> None:
    path = _write(tmp_path)
    assert load_study(path).describe() == load_study(path).describe()
    assert load_study(path).describe() != load_study(path, {"optim.lr": 0.05}).describe()


BAD = {
    "unknown training key in a method": (
        STUDY.replace("loss.method: supcon", "loss.methd: supcon"),
        "methods.supcon.set",
        "line 11",
    ),
    "bad value in the study's set": (
        STUDY.replace("optim.epochs: 20", "optim.epochs: 0"),
        "set",
        "line 7",
    ),
    "unknown study key": (
        STUDY.replace("  seeds: [0, 1]", "  sedes: [0, 1]"),
        "study.sedes",
        "line 4",
    ),
    "seeds not integers": (STUDY.replace("seeds: [0, 1]", "seeds: [a]"), "study.seeds", "line 4"),
    "claim names no method": (
        STUDY.replace("worse: simclr", "worse: byol"),
        "claims.0.worse",
        "byol",
    ),
    "bad metric": (STUDY.replace("  seeds:", "  metric: top9\n  seeds:"), "study.metric", "top9"),
    "baseline among the candidates": (
        STUDY.replace("better: [tags], worse: simclr", "better: [tags, simclr], worse: simclr"),
        "claims.0",
        "among better",
    ),
    "correlation is no longer a claim kind": (
        STUDY.replace("kind: description", "kind: correlation"),
        "claims.1.kind",
        "paired, series or description",
    ),
    "a series without its direction": (
        STUDY.replace(
            "kind: description, methods: [tags, supcon]",
            "kind: series, methods: [simclr, tags, supcon], axis: mutual_information_bits",
        ),
        "claims.1.expect",
        "rises or falls",
    ),
    "a series along no axis": (
        STUDY.replace(
            "kind: description, methods: [tags, supcon]",
            "kind: series, methods: [simclr, tags, supcon], axis: accuracy, expect: rises",
        ),
        "claims.1",
        "axis",
    ),
    "one fold": (
        STUDY.replace("epochs: [50]", "epochs: [50], folds: 1"),
        "study.probe.folds",
        ">= 2",
    ),
    "negative weight decay": (
        STUDY.replace("[0.0, 1.0e-3]", "[-1.0]"),
        "study.probe.weight_decays",
        ">= 0",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_study_fails_naming_the_file_line_and_key(tmp_path: Path, case: str) -> None:
    text, key, detail = BAD[case]
    path = _write(tmp_path, text=text.format(extra=""))
    with pytest.raises(ConfigError) as err:
        load_study(path)
    message = str(err.value)
    assert key in message and detail in message and str(path) in message, message
    assert "\n" not in message


def test_quick_without_a_quick_section_is_refused(tmp_path: Path) -> None:
    text = STUDY.format(extra="").split("quick:")[0]
    with pytest.raises(ConfigError, match="quick"):
        load_study(_write(tmp_path, text=text), quick=True)


def test_the_gpu_study_extends_the_cpu_one_with_its_own_budget() -> None:
    cpu, gpu = load_study("study_cpu"), load_study("study_gpu")
    assert [m.name for m in gpu.methods] == [m.name for m in cpu.methods]
    assert gpu.claims == cpu.claims and gpu.probe == cpu.probe
    assert gpu.base.model.backbone == "resnet18" and gpu.base.run.device == "gpu"
    assert len(gpu.seeds) == 5 and gpu.name == "study_gpu"


def test_settings_make_a_settings_x_methods_x_seeds_grid(tmp_path: Path) -> None:
    extra = "settings:\n  wide: {set: {model.cnn_width: 32}}\n  long: {set: {optim.epochs: 40}}\n"
    study = load_study(_write(tmp_path, extra))
    assert len(study.grid()) == 2 * 3 * 2 and study.grid()[0]["setting"] == "wide"
    assert study.trial_config("simclr", 0, "wide").model.cnn_width == 32
    assert study.trial_config("simclr", 0, "long").optim.epochs == 40
    assert study.trial_config("tags", 0, "long").optim.epochs == 30  # the method's set wins
    bad = "settings:\n  wide: {set: {model.cnn_widht: 32}}\n"
    with pytest.raises(ConfigError, match=r"settings\.wide\.set"):
        load_study(_write(tmp_path, bad))


def test_the_wall_clock_sums_invocations_and_keeps_a_killed_ones_time(tmp_path: Path) -> None:
    import json
    import time

    from clinfo_ray.commands.study import WallClock
    from clinfo_ray.study.run import WALL_FILE

    def saved() -> float:
        return float(json.loads((tmp_path / WALL_FILE).read_text())["seconds"])

    with WallClock(tmp_path, every=0.05) as first:
        time.sleep(0.3)
        assert saved() >= 0.15  # written while it runs: a SIGKILL now loses < 0.05 s
    assert first.total >= 0.3 and saved() == first.total
    with WallClock(tmp_path, every=10.0) as second:
        time.sleep(0.1)
    assert second.total >= first.total + 0.1 and saved() == second.total


def test_a_trials_evaluation_asks_for_no_more_than_its_workers_held() -> None:
    """Two evaluations at once, each with the cluster's default actors (half its CPUs), left no
    CPU for the decode tasks feeding them and waited for ever (seen in tests/test_study.py)."""
    cfg = load_study("study_cpu").trial_config("simclr", 0)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, device="cpu"))
    settings, cpus = trial_encoder_share(cfg)
    assert settings.num_actors == 1
    assert cpus == pytest.approx(cfg.run.num_workers * cfg.run.cpus_per_worker)
    fixed = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, num_actors=4))
    settings, cpus = trial_encoder_share(fixed)
    assert settings.num_actors == 4  # set by the user: kept, the trial's CPUs shared out
    assert cpus == pytest.approx(cfg.run.num_workers * cfg.run.cpus_per_worker / 4)
    gpu = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, device="gpu"))
    settings, _ = trial_encoder_share(gpu)
    assert settings.num_actors == cfg.run.num_workers  # one actor per GPU the trial held


def test_a_series_claim_loads_with_its_axis_and_direction(tmp_path: Path) -> None:
    text = STUDY.replace(
        "kind: description, methods: [tags, supcon]",
        "kind: series, methods: [supcon, tags, simclr], axis: conditional_entropy_bits, "
        "expect: falls",
    )
    claim = load_study(_write(tmp_path, text=text.format(extra=""))).claims[1]
    assert (claim.kind, claim.axis, claim.expect) == ("series", "conditional_entropy_bits", -1)
    assert claim.methods == ("supcon", "tags", "simclr")


def test_the_rules_digest_moves_with_claims_probe_and_methods_only(tmp_path: Path) -> None:
    base = load_study(_write(tmp_path)).rules()
    assert set(base) == {"claims", "probe", "methods"}
    assert load_study(_write(tmp_path)).rules() == base
    changed = {
        "claims": STUDY.replace("text: r,", "text: another,"),
        "probe": STUDY.replace("epochs: [50]", "epochs: [50], folds: 5"),
        "methods": STUDY.replace("optim.epochs: 30", "optim.epochs: 31"),
    }
    for part, text in changed.items():
        rules = load_study(_write(tmp_path, text=text.format(extra=""))).rules()
        assert [k for k in base if rules[k] != base[k]] == [part], part
    # a note or the study's own set are not rules of the verdicts
    notes = load_study(_write(tmp_path, extra="notes: [a note]")).rules()
    assert notes == base


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_pcl_is_named_for_what_it_is_wherever_it_appears(path: Path) -> None:
    """The in-batch variant (no momentum encoder, no queue) carries that in its name, which the
    methods table, the claims and the plots all print, and says which granularity its cluster
    columns describe."""
    study = load_study(path)
    for method in study.methods:
        if study.base.loss.method == "pcl" or method.overrides.get("loss.method") == "pcl":
            assert method.name == "pcl-inbatch", method.name
            assert "in-batch" in method.about and "K = 50 granularity" in method.about
    for claim in study.claims:
        assert "pcl" not in claim.named or "pcl-inbatch" in claim.named


def test_the_cpu_study_says_which_constructions_are_its_own() -> None:
    notes = " ".join(load_study("study_cpu").notes)
    assert "TF-IDF k-means of tags (tfidf-K) is this project's construction" in notes
    assert "PCL is an in-batch variant (pcl-inbatch)" in notes
    assert "none changed after" not in notes  # protocol 1's false sentence is gone
