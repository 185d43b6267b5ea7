"""Checkpoint directories: save on rank 0, load anywhere with ``torch.load(weights_only=True)``.

Layout of one checkpoint directory::

    model.pt       state dict of the unwrapped model (no ``module.`` / ``_orig_mod.`` prefixes)
    optimizer.pt   optimizer state dict            (optional)
    scheduler.pt   LR scheduler state dict         (optional)
    loss.pt        state dict of a loss with parameters, e.g. the ce-clusters classifier (optional)
    clusters.pt    the run's clusters: version and (n_train,) int64 assignment (optional)
    state.json     epoch, step, config, cluster_table_version, extra, files, format_version, ...

Each file is written to a temporary name and renamed, and state.json is written last: a
directory with state.json is complete, and its ``files`` lists the optional parts it holds.
A checkpoint is read from a local folder or a URI (``s3://bucket/runs/x/checkpoint_epoch0002``,
where Ray Train uploaded it): every read goes through :mod:`clinfo_ray.storage.location`.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clinfo_ray.config import ModelConfig, TrainConfig
from clinfo_ray.model import ContrastiveModel, build_model
from clinfo_ray.storage import location as loc

FORMAT_VERSION = 1
STATE_FILE = "state.json"
CLUSTERS_FILE = "clusters.pt"
# Fields of ModelConfig that change parameter shapes (proj_hidden via proj_hidden_dim).
_SHAPE_FIELDS = ("backbone", "small_image_stem", "cnn_width", "proj_dim", "proj_batch_norm")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class Stateful(Protocol):
    """What a checkpoint part is: an object that gives and takes a plain-data state dict."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class CheckpointState:
    """The contents of state.json. ``epoch`` counts completed epochs; ``step`` optimizer steps."""

    epoch: int
    step: int
    config: dict[str, Any]
    cluster_table_version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config, source=f"checkpoint {STATE_FILE}")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys without leading ``module.`` / ``_orig_mod.`` (from saving a wrapped model)."""
    clean: dict[str, Any] = {}
    for key, value in state_dict.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".json":
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def _part_files(
    optimizer: Any, scheduler: Any, loss_module: Any, clusters: Any
) -> dict[str, Stateful | None]:
    """File name -> object of the optional parts of a checkpoint (None: not saved / loaded)."""
    return {
        "optimizer.pt": optimizer,
        "scheduler.pt": scheduler,
        "loss.pt": loss_module,
        CLUSTERS_FILE: clusters,
    }


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    epoch: int,
    step: int,
    config: TrainConfig | Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    loss_module: nn.Module | None = None,
    clusters: Stateful | None = None,
    cluster_table_version: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory (created if needed) and return its path.

    ``model`` may be DDP-wrapped or compiled; the unwrapped state dict is saved. ``clusters``:
    the run's cluster state (``training.cluster_state.ClusterState``), whose state dict holds
    tensors and plain values only. ``extra`` must be JSON-serialisable (e.g. metrics).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).unlink(missing_ok=True)  # incomplete until state.json is back
    _save_atomic(strip_wrapper_prefixes(unwrap_model(model).state_dict()), directory / "model.pt")
    parts = _part_files(optimizer, scheduler, loss_module, clusters)
    for name, obj in parts.items():
        if obj is not None:
            _save_atomic(obj.state_dict(), directory / name)
    state = {
        "format_version": FORMAT_VERSION,
        "epoch": int(epoch),
        "step": int(step),
        "config": config.to_dict() if isinstance(config, TrainConfig) else dict(config),
        "cluster_table_version": cluster_table_version,
        "extra": dict(extra or {}),
        "files": sorted(name for name, obj in parts.items() if obj is not None),
        "torch_version": torch.__version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _save_atomic(state, directory / STATE_FILE)
    return directory


def read_checkpoint_state(directory: str | Path) -> CheckpointState:
    """state.json of a checkpoint directory, without loading any tensors."""
    path = loc.join(directory, STATE_FILE)
    try:
        raw = json.loads(loc.read_text(path))
    except (FileNotFoundError, IsADirectoryError):
        if not loc.is_dir(directory):
            raise CheckpointError(f"no such checkpoint directory: {directory}") from None
        raise CheckpointError(
            f"not a complete checkpoint: {directory} has no {STATE_FILE}"
        ) from None
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {raw.get('format_version')!r}; this code reads "
            f"{FORMAT_VERSION}"
        )
    return CheckpointState(
        epoch=raw["epoch"],
        step=raw["step"],
        config=raw["config"],
        cluster_table_version=raw.get("cluster_table_version"),
        extra=raw.get("extra", {}),
    )


def _check_model_config(
    directory: str | Path, saved: Mapping[str, Any], current: ModelConfig
) -> None:
    ckpt = ModelConfig(**saved)
    diffs = [
        f"model.{name}: checkpoint {getattr(ckpt, name)!r}, config {getattr(current, name)!r}"
        for name in (*_SHAPE_FIELDS, "proj_hidden_dim")
        if getattr(ckpt, name) != getattr(current, name)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {directory} holds a different model shape: " + "; ".join(diffs)
        )


def _load_state_dict(
    directory: str | Path, module: nn.Module, state_dict: Mapping[str, Any]
) -> None:
    """load_state_dict with a message that lists the missing, unexpected and mismatched keys."""
    state_dict = strip_wrapper_prefixes(state_dict)
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint {directory} does not fit the model: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(mismatched)} of another shape (e.g. {mismatched[:3]})"
        )
    module.load_state_dict(state_dict)


def _torch_load(path: str, map_location: str | torch.device) -> Any:
    source: str | io.BytesIO = io.BytesIO(loc.read_bytes(path)) if loc.is_uri(path) else path
    return torch.load(source, map_location=map_location, weights_only=True)


def load_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    loss_module: nn.Module | None = None,
    clusters: Stateful | None = None,
    model_config: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> CheckpointState:
    """Restore the given objects in place from a checkpoint directory and return its state.

    With ``model_config``, a checkpoint of another model shape fails before any tensor is read,
    naming the differing ``model.*`` keys. Objects passed here whose file the checkpoint lacks
    fail too (a resumed optimizer must not silently start fresh).
    """
    state = read_checkpoint_state(directory)
    if model_config is not None:
        _check_model_config(directory, state.config.get("model", {}), model_config)
    target = unwrap_model(model)
    _load_state_dict(directory, target, _torch_load(loc.join(directory, "model.pt"), map_location))
    parts = _part_files(optimizer, scheduler, loss_module, clusters)
    for name, obj in parts.items():
        if obj is None:
            continue
        path = loc.join(directory, name)
        if not loc.is_file(path):
            raise CheckpointError(f"checkpoint {directory} has no {name} to restore")
        saved = _torch_load(path, map_location)
        if isinstance(obj, nn.Module):
            _load_state_dict(directory, obj, saved)
        else:
            obj.load_state_dict(saved)
    return state


def load_model_from_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[ContrastiveModel, TrainConfig]:
    """Build the model a checkpoint describes, load its weights (eval mode), return its config."""
    config = read_checkpoint_state(directory).train_config()
    model = build_model(config.model)
    load_checkpoint(directory, model=model, model_config=config.model, map_location=map_location)
    return model.eval(), config
