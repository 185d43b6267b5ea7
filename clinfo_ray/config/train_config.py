"""TrainConfig: the stage configs of one job, its plain-dict form, and dotted-key overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clinfo_ray.config.sections import (
    ClustersConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    _Section,
)

# Loss methods that fix their clusters regardless of clusters.method.
_FIXED_CLUSTERS = {"simclr": "instance", "supcon": "labels", "clinfonce-kmeans": "kmeans"}
_SECTIONS: dict[str, type[_Section]] = {
    "data": DataConfig,
    "clusters": ClustersConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "eval": EvalConfig,
    "run": RunConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    """One training job: the seven stage configs, plus checks that span stages."""

    data: DataConfig = field(default_factory=DataConfig)
    clusters: ClustersConfig = field(default_factory=ClustersConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name}: expected {cls.__name__}; got {getattr(self, name)!r}")
        if self.data.cache == "worker" and self.data.augment_on != "worker":
            raise ConfigError(
                "data.augment_on: data.cache 'worker' keeps the images on the workers, so they "
                f"must augment them too (augment_on: worker); got {self.data.augment_on!r}",
                key="data.augment_on",
            )
        if self.loss.method == "ce-clusters" and self.is_iterative_clustering:
            raise ConfigError(
                "loss.method: ce-clusters needs a fixed set of K clusters for its classifier from "
                "the start; clusters.method 'kmeans' starts from instances and re-clusters "
                "during the run (use tags-kmeans, tags, hierarchy, labels or instance)",
                key="loss.method",
            )
        if self.clusters.table_path and (
            self.loss.method in _FIXED_CLUSTERS or self.is_iterative_clustering
        ):
            raise ConfigError(
                f"clusters.table_path: loss.method {self.loss.method!r} with clusters.method "
                f"{self.clusters.method!r} uses {self.cluster_method} clusters and would ignore "
                "the table (a table needs loss.method clinfonce or ce-clusters and "
                "clusters.method other than kmeans)",
                key="clusters.table_path",
            )
        if self.is_iterative_clustering and self.clusters.warmup_epochs >= self.optim.epochs:
            raise ConfigError(
                f"clusters.warmup_epochs: must be < optim.epochs ({self.optim.epochs}); "
                f"got {self.clusters.warmup_epochs}",
                key="clusters.warmup_epochs",
            )

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step over all workers (each image gives data.views views)."""
        return self.data.batch_size_per_worker * self.run.num_workers

    @property
    def cluster_method(self) -> str:
        """The clusters actually used: simclr -> instance, supcon -> labels,
        clinfonce-kmeans -> kmeans; clinfonce and ce-clusters use clusters.method."""
        return _FIXED_CLUSTERS.get(self.loss.method, self.clusters.method)

    @property
    def is_iterative_clustering(self) -> bool:
        return self.cluster_method == "kmeans"

    @property
    def autocast_bf16(self) -> bool:
        """bf16 autocast is on only on GPU workers."""
        return self.optim.amp and self.run.use_gpu

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict of builtins (what crosses into Ray and into state.json)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Strict inverse of :meth:`to_dict`; missing keys take defaults, unknown keys fail."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: expected a mapping of sections; got {raw!r}")
        sections: dict[str, _Section] = {}
        for name, value in raw.items():
            if name not in _SECTIONS:
                raise ConfigError(
                    f"unknown key {name!r} in {source} (sections: {', '.join(_SECTIONS)})",
                    key=str(name),
                )
            sections[name] = _build_section(name, value or {}, source)
        return cls(**sections)  # type: ignore[arg-type]


def _build_section(name: str, raw: Any, source: str) -> _Section:
    section_cls = _SECTIONS[name]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a mapping in {source}; got {raw!r}", key=name)
    known = [f.name for f in dataclasses.fields(section_cls)]  # type: ignore[arg-type]
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"unknown key '{name}.{key}' in {source} (known: {', '.join(known)})",
                key=f"{name}.{key}",
            )
    return section_cls(**raw)


def _set_leaf(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in _SECTIONS:
        raise ConfigError(f"unknown key {key!r} in {source}", key=key)
    section = raw.setdefault(parts[0], {})
    if section is None:
        section = raw[parts[0]] = {}
    known = [f.name for f in dataclasses.fields(_SECTIONS[parts[0]])]  # type: ignore[arg-type]
    if parts[1] not in known:
        raise ConfigError(f"unknown key {key!r} in {source} (known: {', '.join(known)})", key=key)
    section[parts[1]] = value


def apply_overrides(
    config: TrainConfig, overrides: Mapping[str, Any], source: str = "overrides"
) -> TrainConfig:
    """A new config with ``{"section.field": value}`` leaves replaced (Ray Tune's trial dicts)."""
    raw = config.to_dict()
    for key, value in overrides.items():
        _set_leaf(raw, key, value, source)
    return TrainConfig.from_dict(raw, source)
