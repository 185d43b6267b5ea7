"""Config: YAML loading, --set overrides, errors that name the key, and the dict round trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from clinfo_ray.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_set_overrides,
)

CONFIGS = Path(__file__).resolve().parent.parent / "clinfo_ray" / "configs"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_quickstart_matches_the_brief() -> None:
    cfg = load_config(CONFIGS / "quickstart.yaml")
    assert cfg.data.image_size == 32 and cfg.data.views == 2
    assert cfg.model.backbone == "small_cnn"
    assert cfg.run.num_workers == 2 and cfg.run.device == "cpu"
    assert cfg.loss.method == "clinfonce" and cfg.loss.temperature == 0.1
    assert cfg.clusters.method is None and cfg.clusters.k == 100
    assert cfg.global_batch_size == 128
    assert cfg.cluster_method == "tags-kmeans"
    assert cfg.optim.weight_decay == pytest.approx(5e-4)


def test_gpu_config_loads() -> None:
    cfg = load_config(CONFIGS / "gpu_resnet50.yaml")
    assert cfg.model.backbone == "resnet50" and cfg.optim.name == "lars"
    assert cfg.autocast_bf16 and cfg.model.feature_dim == 2048


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  backbon: resnet18\n")
    with pytest.raises(ConfigError, match=r"model\.backbon") as info:
        load_config(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match=r"'modle'.*c\.yaml"):
        load_config(_write(tmp_path, "modle:\n  backbone: resnet18\n"))


def test_unknown_override_key_fails() -> None:
    with pytest.raises(ConfigError, match=r"optim\.learning_rate"):
        load_config(CONFIGS / "quickstart.yaml", ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"'lr'"):
        load_config(CONFIGS / "quickstart.yaml", ["lr=0.1"])
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        parse_set_overrides(["optim.lr"])


@pytest.mark.parametrize(
    ("text", "key", "bad"),
    [
        ("model:\n  backbone: resnet34\n", "model.backbone", "resnet34"),
        ("optim:\n  lr: -0.1\n", "optim.lr", "-0.1"),
        ("run:\n  num_workers: 0\n", "run.num_workers", "0"),
        ("run:\n  num_workers: two\n", "run.num_workers", "two"),
        ("data:\n  crop_scale_min: 1.5\n", "data.crop_scale_min", "1.5"),
        ("loss:\n  temperature: 0\n", "loss.temperature", "0"),
        ("data:\n  views: true\n", "data.views", "True"),
    ],
)
def test_bad_value_names_key_value_and_file(tmp_path: Path, text: str, key: str, bad: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(key + ":") and bad in message and str(path) in message
    assert info.value.key == key


def test_bad_override_value_says_it_came_from_set() -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone.*vgg.*--set"):
        load_config(CONFIGS / "quickstart.yaml", ["model.backbone=vgg"])


def test_overrides_parse_as_yaml_scalars_and_apply() -> None:
    cfg = load_config(
        CONFIGS / "quickstart.yaml",
        ["optim.lr=1e-3", "run.device=cpu", "loss.base_temperature=0.07", "run.name=x=y"],
    )
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.loss.base_temperature == pytest.approx(0.07)
    assert cfg.run.name == "x=y"
    numeric_name = load_config(CONFIGS / "quickstart.yaml", ["run.name=2024", "data.dataset_dir=1"])
    assert numeric_name.run.name == "2024" and numeric_name.data.dataset_dir == "1"
    assert parse_set_overrides(["model.proj_hidden=null", "optim.epochs=3", "optim.amp=on"]) == {
        "model.proj_hidden": None,
        "optim.epochs": 3,
        "optim.amp": True,
    }


def test_ints_widen_to_float_but_not_bools() -> None:
    assert OptimConfig(lr=1).lr == 1.0 and isinstance(OptimConfig(lr=1).lr, float)
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        OptimConfig(lr=True)


def test_round_trip_through_plain_json() -> None:
    cfg = load_config(CONFIGS / "gpu_resnet50.yaml", ["model.proj_hidden=null"])
    plain = json.loads(json.dumps(cfg.to_dict()))  # what crosses into Ray
    assert TrainConfig.from_dict(plain) == cfg
    with pytest.raises(ConfigError, match=r"eval\.knn"):
        TrainConfig.from_dict({"eval": {"knn": 5}})


def test_apply_overrides_for_tune() -> None:
    cfg = TrainConfig()
    tuned = apply_overrides(cfg, {"loss.temperature": 0.2, "clusters.k": 50}, source="trial")
    assert tuned.loss.temperature == 0.2 and tuned.clusters.k == 50
    assert cfg.loss.temperature == 0.1  # the original is untouched
    with pytest.raises(ConfigError, match=r"loss\.tau.*trial"):
        apply_overrides(cfg, {"loss.tau": 0.2}, source="trial")
    with pytest.raises(ConfigError, match=r"clusters\.k"):
        apply_overrides(cfg, {"clusters.k": 1})


def test_frozen_and_derived_properties() -> None:
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    assert ModelConfig(backbone="resnet18").feature_dim == 512
    assert ModelConfig(cnn_width=16).feature_dim == 128
    assert ModelConfig(backbone="resnet18", proj_hidden=None).proj_hidden_dim == 512
    assert DataConfig(crop_scale_min=0.3).crop_scale == (0.3, 1.0)
    assert apply_overrides(cfg, {"loss.method": "simclr"}).cluster_method == "instance"
    assert apply_overrides(cfg, {"loss.method": "supcon"}).cluster_method == "labels"
    assert apply_overrides(cfg, {"loss.method": "clinfonce-kmeans"}).is_iterative_clustering


def test_cross_section_checks() -> None:
    with pytest.raises(ConfigError, match=r"data\.augment_on.*'worker'.*'ray_data'"):
        apply_overrides(TrainConfig(), {"data.cache": "worker"})
    with pytest.raises(ConfigError, match=r"data\.augment_on.*'gpu'"):
        apply_overrides(TrainConfig(), {"data.augment_on": "gpu"})  # the old name is refused
    ok = apply_overrides(TrainConfig(), {"data.cache": "worker", "data.augment_on": "worker"})
    assert ok.data.cache == "worker"
    with pytest.raises(ConfigError, match=r"clusters\.warmup_epochs.*optim\.epochs"):
        apply_overrides(
            TrainConfig(),
            {
                "clusters.method": "kmeans",
                "clusters.warmup_epochs": 5,
                "optim.epochs": 5,
                "optim.warmup_epochs": 1,
            },
        )
    with pytest.raises(ConfigError, match=r"optim\.warmup_epochs"):
        OptimConfig(warmup_epochs=10, epochs=5)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        # ce-clusters' classifier needs K from the start; iterative k-means has no starting table
        (
            {"loss.method": "ce-clusters", "clusters.method": "kmeans"},
            r"loss\.method.*ce-clusters.*clusters\.method 'kmeans'",
        ),
        # a table that the method would silently ignore
        (
            {"loss.method": "simclr", "clusters.table_path": "t.parquet"},
            r"clusters\.table_path.*loss\.method 'simclr'",
        ),
        (
            {"loss.method": "supcon", "clusters.table_path": "t.parquet"},
            r"clusters\.table_path.*'supcon'",
        ),
        (
            {"loss.method": "clinfonce-kmeans", "clusters.table_path": "t.parquet"},
            r"clusters\.table_path",
        ),
        (
            {"clusters.method": "kmeans", "clusters.table_path": "t.parquet"},
            r"clusters\.table_path.*clusters\.method 'kmeans'",
        ),
        # pcl's prototypes are k-means of its own embeddings: no other clusters, no table
        (
            {"loss.method": "pcl", "clusters.method": "tags"},
            r"clusters\.method: loss\.method 'pcl' always uses kmeans clusters; got 'tags'",
        ),
        (
            {"loss.method": "pcl", "clusters.table_path": "t.parquet"},
            r"clusters\.table_path.*loss\.method 'pcl'",
        ),
    ],
)
def test_unsupported_method_combinations_name_the_keys(
    overrides: dict[str, str], pattern: str
) -> None:
    with pytest.raises(ConfigError, match=pattern) as raised:
        apply_overrides(TrainConfig(), overrides)
    assert raised.value.key in overrides


def test_supported_method_combinations_load() -> None:
    for method in ("tags-kmeans", "tags", "hierarchy", "labels", "instance"):
        cfg = apply_overrides(
            TrainConfig(), {"loss.method": "ce-clusters", "clusters.method": method}
        )
        assert cfg.cluster_method == method and not cfg.is_iterative_clustering
    cfg = apply_overrides(
        TrainConfig(), {"loss.method": "ce-clusters", "clusters.table_path": "t.parquet"}
    )
    assert cfg.clusters.table_path == "t.parquet"
    assert apply_overrides(
        TrainConfig(), {"loss.method": "clinfonce-kmeans"}
    ).is_iterative_clustering


def test_pcl_implies_kmeans_and_reads_its_granularities() -> None:
    cfg = apply_overrides(TrainConfig(), {"loss.method": "pcl"})
    assert cfg.cluster_method == "kmeans" and cfg.is_iterative_clustering
    assert cfg.run_clusters.method == "kmeans"
    assert cfg.loss.pcl_ks == (50, 100, 200) and cfg.loss.proto_weight == 1.0
    assert apply_overrides(cfg, {"clusters.method": "kmeans"}).cluster_method == "kmeans"
    assert apply_overrides(cfg, {"loss.pcl_ks": [8, 4]}).loss.pcl_ks == (8, 4)
    assert apply_overrides(cfg, {"loss.pcl_ks": "8, 16"}).loss.pcl_ks == (8, 16)
    flags = parse_set_overrides(["loss.pcl_ks=[3,6]", "loss.proto_weight=0.5"])
    tuned = apply_overrides(cfg, flags)
    assert tuned.loss.pcl_ks == (3, 6) and tuned.loss.proto_weight == 0.5
    one = apply_overrides(cfg, parse_set_overrides(["loss.pcl_ks=12"]))  # YAML reads an int
    assert one.loss.pcl_ks == (12,)
    assert TrainConfig.from_dict(json.loads(json.dumps(tuned.to_dict()))) == tuned


@pytest.mark.parametrize("value", [[], [1], [50, 1], "50,x", [2.5, 4], [True, 4], "0", None])
def test_bad_pcl_ks_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"loss\.pcl_ks") as raised:
        apply_overrides(TrainConfig(), {"loss.method": "pcl", "loss.pcl_ks": value})
    assert raised.value.key == "loss.pcl_ks"


def test_bad_pcl_ks_from_set_says_where_it_came_from(tmp_path: Path) -> None:
    path = _write(tmp_path, "loss:\n  method: pcl\n")
    with pytest.raises(ConfigError, match=r"loss\.pcl_ks.*each >= 2.*from --set loss\.pcl_ks"):
        load_config(path, ["loss.pcl_ks=4,1"])
    with pytest.raises(ConfigError, match=r"loss\.proto_weight: must be >= 0"):
        apply_overrides(TrainConfig(), {"loss.proto_weight": -1})
