"""What each training method optimises, and one optimiser step (no Ray: the GPU check and the
benchmarks run it in a plain loop too).

===============  ===========================================================================
method           loss
===============  ===========================================================================
simclr           Cl-InfoNCE with every image its own cluster (NT-Xent)
clinfonce        Cl-InfoNCE with the clusters of a table (tags, hierarchy, labels, ...)
clinfonce-kmeans Cl-InfoNCE with clusters from k-means of the model's own embeddings
supcon           Cl-InfoNCE with the downstream labels (unlabelled images: their own cluster)
ce-clusters      cross-entropy of a linear classifier over the clusters, on encoder features
===============  ===========================================================================
"""

from __future__ import annotations

import torch
from torch import nn

from clinfo_ray.checkpointing import unwrap_model
from clinfo_ray.config import TrainConfig
from clinfo_ray.data.augment import ViewAugmentation
from clinfo_ray.losses import ClusterCrossEntropy, cl_infonce
from clinfo_ray.model import ContrastiveModel, ModelOutput


class TrainModule(nn.Module):
    """The model plus, for ``ce-clusters``, the cluster classifier: one module for DDP, so the
    classifier's gradients are averaged over ranks like the encoder's."""

    def __init__(self, model: ContrastiveModel, num_clusters: int | None) -> None:
        super().__init__()
        self.model = model
        self.classifier = (
            ClusterCrossEntropy(model.feature_dim, num_clusters) if num_clusters else None
        )

    def forward(self, views: torch.Tensor) -> ModelOutput:
        return self.model(views)  # (B, V, D) features and projections


def train_module(module: nn.Module) -> TrainModule:
    """The TrainModule inside DDP / torch.compile wrappers."""
    inner = unwrap_model(module)
    if not isinstance(inner, TrainModule):
        raise TypeError(f"expected a TrainModule, got {type(inner).__name__}")
    return inner


def cluster_ids_for(
    method: str, *, index: torch.Tensor, cluster: torch.Tensor, label: torch.Tensor
) -> torch.Tensor:
    """(B,) int64 ids whose equal values are positives, for the contrastive methods."""
    if method == "simclr":
        return index  # the image's row in its split: unique
    if method == "supcon":  # an image without a label is its own class: -(index + 1) < 0
        return torch.where(label >= 0, label, -(index + 1))
    return cluster


def batch_loss(
    module: nn.Module, cfg: TrainConfig, batch: dict[str, torch.Tensor], out: ModelOutput
) -> torch.Tensor:
    """The method's loss of one batch given the model's outputs (``module`` may be DDP)."""
    method = cfg.loss.method
    if method == "ce-clusters":
        classifier = train_module(module).classifier
        assert classifier is not None, "ce-clusters builds TrainModule with num_clusters"
        return classifier(out.features, batch["cluster"])
    ids = cluster_ids_for(
        method, index=batch["index"], cluster=batch["cluster"], label=batch["label"]
    )
    return cl_infonce(out.projections, ids, cfg.loss.temperature, cfg.loss.base_temperature)


def train_step(
    module: nn.Module,
    cfg: TrainConfig,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> float:
    """One optimiser step on one batch; returns the loss."""
    views = batch["views"]  # (B, V, 3, S, S); the model applies channels-last itself
    with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
        out = module(views)
        loss = batch_loss(module, cfg, batch, out)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.detach())  # CPU-GPU sync point, once a step


def augmentation_of(cfg: TrainConfig, views: int | None = None) -> ViewAugmentation:
    d = cfg.data
    return ViewAugmentation(
        size=d.image_size,
        views=views or d.views,
        min_scale=d.crop_scale_min,
        jitter=d.color_jitter,
        jitter_prob=d.color_jitter_prob,
        grayscale_prob=d.grayscale_prob,
    )
