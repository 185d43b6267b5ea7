"""What turns images into embeddings: a checkpoint directory, or an exported encoder directory.

Both are small frozen dataclasses of paths (or URIs: ``s3://...``), checked on the driver (a
missing file fails there in one line, before Ray starts) and handed to every encoder actor,
which calls :meth:`load` once.
A loaded encoder maps ``(B, 3, S, S)`` float32 in [0, 1] (S: ``input_size``) to ``(B, D)``
float32. ``identity()`` is what the embeddings' manifest records of it.

- :class:`CheckpointEncoder`: ``model.encode`` (the encoder before the projection head; eval
  mode, so BatchNorm uses its running statistics and a row does not depend on its batch) at the
  checkpoint's ``data.image_size``; with ``output="projections"`` the L2-normalised
  projection-head output instead (what k-means clusters of a checkpoint use).
- :class:`ExportedEncoder`: an export directory (``clinfo-ray export``), loaded by
  :func:`clinfo_ray.export.load_encoder`, at its ``preprocess.json``'s ``input_size``; it takes
  the same [0, 1] input a checkpoint's encoder takes and gives the same features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clinfo_ray.checkpointing import (
    CheckpointError,
    load_model_from_checkpoint,
    read_checkpoint_state,
)
from clinfo_ray.export import config_digest
from clinfo_ray.export.description import PREPROCESS_FILE
from clinfo_ray.storage import location as loc

# What a checkpoint's encoder actors return: encoder features, or normalised projections.
OUTPUTS = ("features", "projections")
MODEL_FILE = "model.pt"  # the weights file of a checkpoint directory (clinfo_ray.checkpointing)

Encode = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) in [0, 1] -> (B, D) float32


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_checkpoint(checkpoint_dir: str | Path) -> int:
    """The checkpoint's ``data.image_size``, after checking on the driver that the directory is
    a complete checkpoint (state.json and weights): a missing file fails here, with one line
    naming the path, rather than inside every actor of the pool."""
    size = read_checkpoint_state(checkpoint_dir).train_config().data.image_size
    if not loc.is_file(loc.join(checkpoint_dir, MODEL_FILE)):
        raise CheckpointError(f"not a complete checkpoint: {checkpoint_dir} has no {MODEL_FILE}")
    return size


@dataclass(frozen=True)
class CheckpointEncoder:
    """A checkpoint directory's encoder (or, ``output="projections"``, its normalised head)."""

    path: str
    output: str = "features"

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; got {self.output!r}")

    @classmethod
    def checked(cls, path: str | Path, output: str = "features") -> CheckpointEncoder:
        """The encoder of a complete checkpoint (else :class:`CheckpointError`), path resolved."""
        encoder = cls(loc.absolute(path), output)  # a bad output fails first
        check_checkpoint(path)
        return encoder

    @property
    def input_size(self) -> int:
        return read_checkpoint_state(self.path).train_config().data.image_size

    def identity(self) -> dict[str, Any]:
        state = read_checkpoint_state(self.path)
        return {
            "kind": "checkpoint",
            "checkpoint": self.path,
            "epoch": state.epoch,
            "step": state.step,
            "config_sha256": config_digest(state.config),  # as an export of it records
            "backbone": state.train_config().model.backbone,
            "output": self.output,
        }

    def load(self, device: torch.device) -> Encode:
        model, _ = load_model_from_checkpoint(self.path, map_location=device)
        if self.output == "projections":
            return lambda x: F.normalize(model(x).projections.float(), dim=-1)  # (B, P)
        return lambda x: model.encode(x).float()  # (B, D)


@dataclass(frozen=True)
class ExportedEncoder:
    """An export directory (``clinfo-ray export``), loaded by :func:`clinfo_ray.export.
    load_encoder`; its ``preprocess.json`` is read and checked on the driver."""

    path: str

    @classmethod
    def checked(cls, path: str | Path) -> ExportedEncoder:
        """The encoder of an export directory whose preprocess.json this code reads (else
        :class:`clinfo_ray.export.ExportError`)."""
        encoder = cls(loc.absolute(path))
        encoder.description()
        return encoder

    def description(self) -> dict[str, Any]:
        from clinfo_ray.export.load import read_description

        return read_description(self.path)

    @property
    def input_size(self) -> int:
        return int(self.description()["input_size"])

    def identity(self) -> dict[str, Any]:
        description = self.description()
        source = description.get("checkpoint") or {}
        raw = loc.read_bytes(loc.join(self.path, PREPROCESS_FILE))
        return {
            "kind": "export",
            "export_dir": self.path,
            "preprocess_sha256": _sha256(raw),
            "epoch": source.get("epoch"),
            "step": source.get("step"),
            "config_sha256": source.get("config_sha256"),
            "backbone": description.get("backbone"),
            "output": "features",
        }

    def load(self, device: torch.device) -> Encode:
        from clinfo_ray.export import load_encoder

        module = load_encoder(self.path, device=device).module
        return lambda x: module(x).float()  # (B, D)


EncoderSource = CheckpointEncoder | ExportedEncoder
