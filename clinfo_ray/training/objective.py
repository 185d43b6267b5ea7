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
pcl              NT-Xent (as simclr) + ProtoNCE against k-means prototypes at each of
                 ``loss.pcl_ks``'s granularities (PCL; NT-Xent alone before the first k-means)
===============  ===========================================================================
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn

from clinfo_ray.checkpointing import unwrap_model
from clinfo_ray.config import TrainConfig
from clinfo_ray.data.read.augment import ViewAugmentation
from clinfo_ray.losses import (
    ClusterCrossEntropy,
    Prototypes,
    cl_infonce,
    cluster_cross_entropy,
    pcl_loss,
)
from clinfo_ray.model import ContrastiveModel
from clinfo_ray.training.grad_cache import cached_backward

# Batch key of PCL's (B, M) int64 clusters of each image at each granularity (the worker adds
# it once there are prototypes: ``PrototypeLevels.ids``).
PROTOTYPE_IDS = "prototype_cluster"


class TrainOutput(NamedTuple):
    """What :class:`TrainModule` returns.

    features: (B, V, feature_dim) encoder output.
    projections: (B, V, proj_dim) head output; None for ce-clusters, which never runs the head.
    logits: (B, V, K) float cluster logits for ce-clusters; None for the contrastive methods.
    """

    features: torch.Tensor
    projections: torch.Tensor | None
    logits: torch.Tensor | None


class TrainModule(nn.Module):
    """The model plus, for ``ce-clusters``, the cluster classifier: one module for DDP, so the
    classifier's gradients are averaged over ranks like the encoder's.

    Everything a loss differentiates is computed in ``forward``: DDP registers one forward per
    backward, and a parameter used outside it breaks the gradient reduction on more than one
    rank. With a classifier the projection head plays no part, so it is frozen:
    DDP then expects a gradient for every parameter it tracks (no ``find_unused_parameters``),
    and the optimiser leaves the head alone.
    """

    def __init__(self, model: ContrastiveModel, num_clusters: int | None) -> None:
        super().__init__()
        self.model = model
        self.classifier = (
            ClusterCrossEntropy(model.feature_dim, num_clusters) if num_clusters else None
        )
        if self.classifier is not None:
            model.head.requires_grad_(False)

    def forward(self, views: torch.Tensor) -> TrainOutput:
        if self.classifier is None:
            out = self.model(views)  # (B, V, D) features and projections
            return TrainOutput(out.features, out.projections, None)
        features = self.model.encode(views)  # (B, V, feature_dim)
        return TrainOutput(features, None, self.classifier.logits(features))  # (B, V, K)


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
    if method in ("simclr", "pcl"):  # pcl: its instance term's
        return index  # the image's row in its split: unique
    if method == "supcon":  # an image without a label is its own class: -(index + 1) < 0
        return torch.where(label >= 0, label, -(index + 1))
    return cluster


def batch_loss(
    cfg: TrainConfig,
    batch: dict[str, torch.Tensor],
    out: TrainOutput,
    prototypes: Prototypes | None = None,
) -> torch.Tensor:
    """The method's loss of one batch given :class:`TrainModule`'s outputs.

    ``prototypes``: PCL's, once it has some (then ``batch[PROTOTYPE_IDS]`` holds each image's
    clusters). They are constants held by the worker's ``ClusterState``, not module buffers:
    DDP would broadcast buffers every step and the model's checkpoint would carry them.
    """
    method = cfg.loss.method
    if method == "ce-clusters":
        if out.logits is None:
            raise ValueError("loss.method ce-clusters needs TrainModule(model, num_clusters)")
        return cluster_cross_entropy(out.logits, batch["cluster"])
    if out.projections is None:
        raise ValueError(f"loss.method {method} needs TrainModule(model, None)")
    ids = cluster_ids_for(
        method, index=batch["index"], cluster=batch["cluster"], label=batch["label"]
    )
    if method == "pcl":
        return pcl_loss(
            out.projections,
            ids,
            cfg.loss.temperature,
            prototypes=prototypes,
            cluster_ids=None if prototypes is None else batch[PROTOTYPE_IDS],
            proto_weight=cfg.loss.proto_weight,
            base_temperature=cfg.loss.base_temperature,
        )
    return cl_infonce(out.projections, ids, cfg.loss.temperature, cfg.loss.base_temperature)


def backward_batch(
    module: nn.Module,
    cfg: TrainConfig,
    batch: dict[str, torch.Tensor],
    prototypes: Prototypes | None = None,
) -> torch.Tensor:
    """The gradient of the method's loss of one batch, accumulated into the parameters'
    ``.grad``; returns the loss (detached). The batch in one pass, or with
    ``data.micro_batch_size`` in micro-batches by gradient caching (``grad_cache.py``: the
    gradient of one graph over those micro-batches, BatchNorm per micro-batch)."""
    views = batch["views"]  # (B, V, 3, S, S); the model applies channels-last itself
    precision = functools.partial(
        torch.autocast, views.device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16
    )
    micro = cfg.data.micro_batch_size
    if micro is not None and micro < views.shape[0]:
        loss_of = functools.partial(batch_loss, cfg, batch, prototypes=prototypes)
        return cached_backward(module, views, micro, loss_of, precision)
    with precision():
        loss = batch_loss(cfg, batch, module(views), prototypes)
    loss.backward()
    return loss.detach()


def train_step(
    module: nn.Module,
    cfg: TrainConfig,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    prototypes: Prototypes | None = None,
) -> float:
    """One optimiser step on one batch; returns the loss.

    ``batch``: views (B, V, 3, S, S) float32, and (B,) int64 index, label (-1: unlabelled) and
    cluster (the worker maps each index to its cluster: ``ClusterState.ids``); with PCL's
    ``prototypes``, also its (B, M) int64 ``PROTOTYPE_IDS``.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = backward_batch(module, cfg, batch, prototypes)
    optimizer.step()
    scheduler.step()
    return float(loss)  # CPU-GPU sync point, once a step


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
