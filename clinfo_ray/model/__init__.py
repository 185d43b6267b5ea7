"""Encoders (ResNet-18/50, a small CNN), the projection head, and the model that joins them."""

from clinfo_ray.model.contrastive import ContrastiveModel, ModelOutput, build_model, maybe_compile
from clinfo_ray.model.encoders import ResNetEncoder, SmallCNN, build_encoder
from clinfo_ray.model.heads import ProjectionHead

__all__ = [
    "ContrastiveModel",
    "ModelOutput",
    "ProjectionHead",
    "ResNetEncoder",
    "SmallCNN",
    "build_encoder",
    "build_model",
    "maybe_compile",
]
