"""Encoder + projection head, and the builder that makes them from a ModelConfig."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from clinfo_ray.config import ModelConfig
from clinfo_ray.model.encoders import build_encoder
from clinfo_ray.model.heads import ProjectionHead


class ModelOutput(NamedTuple):
    """What :class:`ContrastiveModel` returns.

    features: encoder output before the head, (B, feature_dim) — or (B, V, feature_dim) for
        (B, V, 3, H, W) input; what evaluation and the ce-clusters baseline use.
    projections: head output, same leading shape with proj_dim last; what Cl-InfoNCE takes.
    """

    features: torch.Tensor
    projections: torch.Tensor


class ContrastiveModel(nn.Module):
    """``forward(images) -> ModelOutput(features, projections)``.

    ``images`` is (B, 3, H, W) or (B, V, 3, H, W) (V views of B images). Views are run as one
    batch of B·V (view v of image b is row b·V + v), so BatchNorm sees all views together, and
    outputs are reshaped back to (B, V, D): the layout ``cl_infonce`` expects.
    """

    def __init__(
        self, encoder: nn.Module, head: ProjectionHead, *, channels_last: bool = False
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.channels_last = channels_last
        self.feature_dim: int = int(encoder.feature_dim)  # type: ignore[arg-type]
        if head.in_dim != self.feature_dim:
            raise ValueError(f"head takes {head.in_dim} features; encoder gives {self.feature_dim}")
        self.proj_dim: int = head.out_dim

    def _flat_images(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        if images.dim() not in (4, 5) or images.shape[-3] != 3:
            raise ValueError(
                f"images must be (B, 3, H, W) or (B, V, 3, H, W); got {tuple(images.shape)}"
            )
        lead = tuple(images.shape[:-3])  # (B,) or (B, V)
        flat = images.reshape(-1, *images.shape[-3:])  # (B·V, 3, H, W)
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        return flat, lead

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features only (no head): (B, feature_dim) or (B, V, feature_dim)."""
        flat, lead = self._flat_images(images)
        return self.encoder(flat).reshape(*lead, -1)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        flat, lead = self._flat_images(images)
        features = self.encoder(flat)  # (B·V, feature_dim)
        projections = self.head(features)  # (B·V, proj_dim)
        return ModelOutput(features.reshape(*lead, -1), projections.reshape(*lead, -1))


def build_model(cfg: ModelConfig) -> ContrastiveModel:
    """A randomly initialised model (on the CPU; channels-last when configured).

    ``cfg.compile`` is not applied here: call :func:`maybe_compile` on the worker, where the
    model lives on its device (checkpointing unwraps compiled and DDP modules).
    """
    encoder = build_encoder(cfg)
    head = ProjectionHead(
        encoder.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, batch_norm=cfg.proj_batch_norm
    )
    if encoder.feature_dim != cfg.feature_dim:  # the config's table must match the code
        raise AssertionError(f"{cfg.backbone}: {encoder.feature_dim} != {cfg.feature_dim}")
    model = ContrastiveModel(encoder, head, channels_last=cfg.channels_last)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """``torch.compile(model)`` when ``cfg.compile``; the model itself otherwise."""
    return torch.compile(model) if cfg.compile else model  # type: ignore[return-value]
