"""The configs of whole commands: a root holds sections; plain-dict form; dotted-key overrides.

:class:`TrainConfig` (train, clusters, eval, demo: a run's seven sections) and
:class:`PrepareJob` (prepare: one section) share one machinery: the YAML file is a mapping of
sections, a missing section or key takes its default, an unknown one fails naming its dotted key,
and ``--set a.b.c=value`` reaches any leaf, nested sections included.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from clinfo_ray.config.section_base import ConfigError, _Section, field_names, nested_section
from clinfo_ray.config.sections import (
    ClustersConfig,
    DataConfig,
    EvalConfig,
    KMeansSettings,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PrepareConfig,
    RunConfig,
)

# Loss methods that fix their clusters (clusters.method may be left out or name the same).
_FIXED_CLUSTERS = {
    "simclr": "instance",
    "supcon": "labels",
    "clinfonce-kmeans": "kmeans",
    "pcl": "kmeans",  # its prototypes: k-means of the model's own embeddings, per loss.pcl_ks
}
_DEFAULT_CLUSTERS = "tags-kmeans"  # of clinfonce and ce-clusters when clusters.method is None


class _Root:
    """Base of the command configs: a frozen dataclass whose fields are sections."""

    SECTIONS: ClassVar[dict[str, type[_Section]]] = {}

    def __post_init__(self) -> None:
        for name, cls in self.SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name}: expected {cls.__name__}; got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict of builtins (what crosses into Ray and into state.json)."""
        return {name: _plain(dataclasses.asdict(getattr(self, name))) for name in self.SECTIONS}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> Any:
        """Strict inverse of :meth:`to_dict`; missing keys take defaults, unknown keys fail."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: expected a mapping of sections; got {raw!r}")
        sections: dict[str, _Section] = {}
        for name, value in raw.items():
            if name not in cls.SECTIONS:
                raise ConfigError(
                    f"unknown key {name!r} in {source} (sections: {', '.join(cls.SECTIONS)})",
                    key=str(name),
                )
            sections[name] = cls.SECTIONS[name].from_mapping(value or {}, source)
        return cls(**sections)

    @classmethod
    def field_type(cls, key: str) -> Any:
        """The type of the leaf a dotted key names (ConfigError for an unknown key)."""
        section_cls, name = _leaf(cls, key, "config")
        return typing.get_type_hints(section_cls)[name]


def _plain(value: Any) -> Any:
    """Tuples as lists, as JSON and YAML give them back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _leaf(root: type[_Root], key: str, source: str) -> tuple[type[_Section], str]:
    """(section class, field name) of a dotted key, checking every part."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in root.SECTIONS:
        raise ConfigError(
            f"unknown key {key!r} in {source} (sections: {', '.join(root.SECTIONS)})", key=key
        )
    cls = root.SECTIONS[parts[0]]
    for depth, part in enumerate(parts[1:], start=1):
        known = field_names(cls)
        if part not in known:
            raise ConfigError(
                f"unknown key {key!r} in {source} (known: {', '.join(known)})", key=key
            )
        inner = nested_section(cls, part)
        if depth == len(parts) - 1:
            if inner is not None:
                raise ConfigError(f"{key} is a section: set one of its keys", key=key)
            return cls, part
        if inner is None:
            raise ConfigError(f"unknown key {key!r} in {source}: {part} has no keys", key=key)
        cls = inner
    raise AssertionError("unreachable")


def set_leaf(root: type[_Root], raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Write ``value`` at dotted ``key`` of a plain config dict (creating sections as needed)."""
    _leaf(root, key, source)
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            child = node[part] = dict(child)
        node = child
    node[parts[-1]] = value


@dataclass(frozen=True)
class TrainConfig(_Root):
    """One training job: the seven stage configs, plus checks that span stages."""

    SECTIONS: ClassVar[dict[str, type[_Section]]] = {
        "data": DataConfig,
        "clusters": ClustersConfig,
        "model": ModelConfig,
        "loss": LossConfig,
        "optim": OptimConfig,
        "eval": EvalConfig,
        "run": RunConfig,
    }
    data: DataConfig = field(default_factory=DataConfig)
    clusters: ClustersConfig = field(default_factory=ClustersConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        fixed = _FIXED_CLUSTERS.get(self.loss.method)
        if fixed and self.clusters.method not in (None, fixed):
            raise ConfigError(
                f"clusters.method: loss.method {self.loss.method!r} always uses {fixed} "
                f"clusters; got {self.clusters.method!r} (leave clusters.method out, or use "
                "loss.method clinfonce to train on those clusters)",
                key="clusters.method",
            )
        self._check_label_keys()
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
        if self.clusters.table_path and (fixed or self.is_iterative_clustering):
            named = (
                f" with clusters.method {self.clusters.method!r}" if self.clusters.method else ""
            )
            raise ConfigError(
                f"clusters.table_path: loss.method {self.loss.method!r}{named} uses "
                f"{self.cluster_method} clusters and would ignore the table (a table needs "
                "loss.method clinfonce or ce-clusters and clusters.method other than kmeans)",
                key="clusters.table_path",
            )
        if self.is_iterative_clustering and self.clusters.warmup_epochs >= self.optim.epochs:
            raise ConfigError(
                f"clusters.warmup_epochs: must be < optim.epochs ({self.optim.epochs}); "
                f"got {self.clusters.warmup_epochs}",
                key="clusters.warmup_epochs",
            )

    def _check_label_keys(self) -> None:
        """clusters.label_* shape the table of the `labels` method: a run whose clusters come
        from elsewhere, or supcon (it reads the stream's labels, never the table), would
        ignore them."""
        keys = self.clusters.label_keys_set
        if not keys:
            return
        key = f"clusters.{keys[0]}"
        if self.cluster_method != "labels":
            raise ConfigError(
                f"{key}: shapes `labels` clusters, but loss.method {self.loss.method!r} trains "
                f"on {self.cluster_method} clusters here (set clusters.method labels, with "
                "loss.method clinfonce or ce-clusters)",
                key=key,
            )
        if self.loss.method == "supcon":
            raise ConfigError(
                f"{key}: loss.method 'supcon' trains on the labels as they are; for split or "
                "merged labels use loss.method clinfonce with clusters.method labels",
                key=key,
            )

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step over all workers (each image gives data.views views)."""
        return self.data.batch_size_per_worker * self.run.num_workers

    @property
    def cluster_method(self) -> str:
        """The clusters the run uses: simclr -> instance, supcon -> labels, clinfonce-kmeans and
        pcl -> kmeans; clinfonce and ce-clusters: clusters.method (tags-kmeans when left out)."""
        fixed = _FIXED_CLUSTERS.get(self.loss.method)
        return fixed or self.clusters.method or _DEFAULT_CLUSTERS

    @property
    def is_iterative_clustering(self) -> bool:
        return self.cluster_method == "kmeans"

    @property
    def run_clusters(self) -> ClustersConfig:
        """The clusters section as the run uses it: the method resolved, the k-means seed
        and, where labels are split or merged, their draw's seed defaulted to run.seed
        (resolved here, not when loading: a later run.seed override reaches it)."""
        kmeans = self.clusters.kmeans
        if kmeans.seed is None:
            kmeans = dataclasses.replace(kmeans, seed=self.run.seed)
        label_seed = self.clusters.label_draw_seed
        if label_seed is None and self.clusters.draws_labels:
            label_seed = self.run.seed
        return dataclasses.replace(
            self.clusters,
            method=self.cluster_method,  # type: ignore[arg-type]
            kmeans=kmeans,
            label_draw_seed=label_seed,
        )

    @property
    def eval_seed(self) -> int:
        """The linear probe's seed: eval.seed, else run.seed."""
        return self.run.seed if self.eval.seed is None else self.eval.seed

    @property
    def autocast_bf16(self) -> bool:
        """bf16 autocast is on only on GPU workers."""
        return self.optim.amp and self.run.device == "gpu"


@dataclass(frozen=True)
class PrepareJob(_Root):
    """``clinfo-ray prepare``: the one section ``prepare``."""

    SECTIONS: ClassVar[dict[str, type[_Section]]] = {"prepare": PrepareConfig}
    prepare: PrepareConfig = field(default_factory=PrepareConfig)


def apply_overrides(config: Any, overrides: Mapping[str, Any], source: str = "overrides") -> Any:
    """A new config of the same kind with ``{"dotted.key": value}`` leaves replaced (Ray Tune's
    trial dicts, the commands' flags)."""
    root = type(config)
    raw = config.to_dict()
    for key, value in overrides.items():
        set_leaf(root, raw, key, value, source)
    return root.from_dict(raw, source)


__all__ = ["KMeansSettings", "PrepareJob", "TrainConfig", "apply_overrides", "set_leaf"]
