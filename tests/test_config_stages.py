"""Every stage configured the same way: nested sections, the prepare and eval stages, the
k-means settings and their seed, generated command-line flags, one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from clinfo_ray.commands.flags import (
    add_config_arguments,
    add_section_flags,
    field_help,
    flag_overrides,
)
from clinfo_ray.config import (
    ClustersConfig,
    ConfigError,
    EvalConfig,
    KMeansSettings,
    PrepareConfig,
    PrepareJob,
    TrainConfig,
    apply_overrides,
    bundled_configs,
    load_config,
    load_or_default,
)


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_nested_kmeans_settings_from_yaml_and_set(tmp_path: Path) -> None:
    path = _write(tmp_path, "clusters:\n  k: 40\n  kmeans:\n    niter: 7\n    init: random\n")
    cfg = load_config(path, ["clusters.kmeans.device=cpu"])
    assert cfg.clusters.k == 40
    assert cfg.clusters.kmeans == KMeansSettings(niter=7, init="random", device="cpu")
    with pytest.raises(ConfigError, match=r"'clusters\.kmeans\.nitre'.*line 4") as bad:
        load_config(_write(tmp_path, "clusters:\n  k: 40\n  kmeans:\n    nitre: 7\n", "d.yaml"))
    assert bad.value.key == "clusters.kmeans.nitre"
    with pytest.raises(ConfigError, match=r"clusters\.kmeans\.init.*'kmeans\+\+'"):
        load_config(path, ["clusters.kmeans.init=kmeans++"])
    with pytest.raises(ConfigError, match=r"clusters\.kmeans is a section"):
        load_config(path, ["clusters.kmeans=3"])


def test_kmeans_seed_defaults_to_run_seed_and_follows_it() -> None:
    cfg = TrainConfig()
    assert cfg.clusters.kmeans.seed is None and cfg.run_clusters.kmeans.seed == 0
    reseeded = apply_overrides(cfg, {"run.seed": 7})
    assert reseeded.run_clusters.kmeans.seed == 7  # resolved when used, not when loaded
    pinned = apply_overrides(reseeded, {"clusters.kmeans.seed": 3})
    assert pinned.run_clusters.kmeans.seed == 3
    assert TrainConfig().eval_seed == 0 and apply_overrides(cfg, {"run.seed": 5}).eval_seed == 5
    assert apply_overrides(cfg, {"eval.seed": 2, "run.seed": 5}).eval_seed == 2


def test_clusters_method_follows_the_loss_and_a_contradiction_fails() -> None:
    cfg = TrainConfig()
    assert cfg.clusters.method is None and cfg.run_clusters.method == "tags-kmeans"
    assert apply_overrides(cfg, {"loss.method": "simclr"}).run_clusters.method == "instance"
    same = apply_overrides(cfg, {"loss.method": "supcon", "clusters.method": "labels"})
    assert same.cluster_method == "labels"
    with pytest.raises(ConfigError, match=r"clusters\.method.*'simclr'.*instance.*'tags'") as e:
        apply_overrides(cfg, {"loss.method": "simclr", "clusters.method": "tags"})
    assert e.value.key == "clusters.method"


def test_tag_filters_are_lists_and_must_not_overlap() -> None:
    cfg = apply_overrides(TrainConfig(), {"clusters.tags_include": "red, blue"})
    assert cfg.clusters.tags_include == ("red", "blue")
    assert ClustersConfig(tags_exclude=["x"]).tags_exclude == ("x",)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"clusters\.tags_exclude.*'red'"):
        ClustersConfig(tags_include=("red",), tags_exclude=("red",))
    with pytest.raises(ConfigError, match=r"clusters\.tags_include"):
        ClustersConfig(tags_include=("red", 3))  # type: ignore[arg-type]


def test_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "optim:\n  lr: [0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:3:")
    assert "not valid YAML" in message


def test_bundled_configs_load_by_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not a checkout: the configs ship inside the package
    assert {"quickstart", "gpu_resnet50"} <= set(bundled_configs())
    assert load_config("quickstart").run.num_workers == 2
    with pytest.raises(ConfigError, match=r"no config file 'quickstrat'.*quickstart"):
        load_config("quickstrat")


def test_prepare_config_checks_and_loads_like_the_others(tmp_path: Path) -> None:
    path = _write(tmp_path, "prepare:\n  source: imagefolder\n  images: img\n")
    with pytest.raises(ConfigError, match=r"prepare\.annotations.*imagefolder") as info:
        load_config(path, root=PrepareJob)
    assert "\n" not in str(info.value)
    job = load_config(path, ["prepare.annotations=a.csv", "prepare.styles=a,b"], root=PrepareJob)
    assert job.prepare.annotations == "a.csv" and job.prepare.styles == ("a", "b")
    with pytest.raises(ConfigError, match=r"prepare\.source.*'imgfolder'"):
        PrepareConfig(source="imgfolder")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown key 'prepare\.img'"):
        load_or_default(None, ["prepare.img=x"], PrepareJob)


def _parser(*sections: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    for section in sections:
        add_section_flags(parser, section)
    return parser


def _leaves(cls: type, prefix: str) -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        if dataclasses.is_dataclass(value):
            keys += _leaves(type(value), f"{prefix}.{f.name}")
        else:
            keys.append(f"{prefix}.{f.name}")
    return keys


@pytest.mark.parametrize("section", [ClustersConfig, EvalConfig, PrepareConfig])
def test_every_leaf_has_a_generated_flag_with_the_dataclass_default(section: type) -> None:
    parser = _parser(section)
    flags = {
        a.dest.split("__", 1)[1].replace("__", "."): a for a in parser._actions if "__" in a.dest
    }
    assert sorted(flags) == sorted(_leaves(section, section.SECTION))
    for key, action in flags.items():
        default = section()
        for part in key.split(".")[1:]:
            default = getattr(default, part)
        shown = ",".join(default) if isinstance(default, tuple) else default
        assert f"default: {shown})" in action.help, key  # the help shows the dataclass default
    assert field_help(KMeansSettings)["seed"] == "None: run.seed"  # the comment is the help


def test_flags_sit_between_the_file_and_set(tmp_path: Path) -> None:
    path = _write(tmp_path, "clusters:\n  k: 40\n  top_k: 5\n  kmeans:\n    niter: 9\n")
    parser = _parser(ClustersConfig)
    args = parser.parse_args(
        ["--config", str(path), "--k", "50", "--kmeans-niter", "11", "--set", "clusters.k=60"]
    )
    cfg = load_or_default(args.config, flag_overrides(args))
    assert cfg.clusters.k == 60  # --set wins over the flag
    assert cfg.clusters.kmeans.niter == 11  # the flag wins over the file
    assert cfg.clusters.top_k == 5  # the file wins over the default
    bad = parser.parse_args(["--k", "one"])
    with pytest.raises(ConfigError, match=r"clusters\.k.*'one'"):
        load_or_default(None, flag_overrides(bad))


def test_boolean_flags_take_both_forms() -> None:
    parser = _parser(PrepareConfig)
    assert flag_overrides(parser.parse_args(["--overwrite"])) == ["prepare.overwrite=true"]
    assert flag_overrides(parser.parse_args(["--no-overwrite"])) == ["prepare.overwrite=false"]
    assert flag_overrides(parser.parse_args([])) == []  # nothing given: nothing overridden
