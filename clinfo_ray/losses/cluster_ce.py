"""The paper's baseline: predict each image's cluster id with cross-entropy.

A linear classifier over K clusters on the encoder's features (before any projection head),
trained jointly with the encoder: L = mean over views of CE(W·h + b, c). Unlike Cl-InfoNCE it
needs K fixed in advance and sees no negatives beyond the classifier's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClusterCrossEntropy(nn.Module):
    """Linear classifier over ``num_clusters`` clusters, with its cross-entropy loss.

    ``forward(features, cluster_ids)``: features (B, D) or (B, V, D) float, cluster_ids (B,)
    int64 in 0..K-1. Returns the 0-d mean cross-entropy over all B·V rows (float32 under
    autocast, as logits are computed in float32).
    """

    def __init__(self, feature_dim: int, num_clusters: int) -> None:
        super().__init__()
        if feature_dim < 1 or num_clusters < 2:
            raise ValueError(
                f"need feature_dim >= 1 and num_clusters >= 2; got {feature_dim}, {num_clusters}"
            )
        self.num_clusters = num_clusters
        self.classifier = nn.Linear(feature_dim, num_clusters)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, features: torch.Tensor, cluster_ids: torch.Tensor) -> torch.Tensor:
        return cluster_cross_entropy(self.logits(features), cluster_ids)


def cluster_cross_entropy(logits: torch.Tensor, cluster_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (B, K) or (B, V, K) against ``cluster_ids`` (B,) int64
    in 0..K-1; with views, every view is a sample with its image's id. Computed in float32.

    Separate from :class:`ClusterCrossEntropy` so that a DDP-wrapped module can compute the
    logits inside its own ``forward`` and the loss outside it.
    """
    if logits.dim() == 3:  # (B, V, K)
        num_views = logits.shape[1]
        logits = logits.flatten(0, 1)
        cluster_ids = cluster_ids.repeat_interleave(num_views)
    if logits.dim() != 2 or cluster_ids.shape != logits.shape[:1]:
        raise ValueError(
            f"logits (B, K) or (B, V, K) with cluster_ids (B,); got logits "
            f"{tuple(logits.shape)} and cluster_ids {tuple(cluster_ids.shape)}"
        )
    num_clusters = logits.shape[1]
    if cluster_ids.numel() and (
        int(cluster_ids.min()) < 0 or int(cluster_ids.max()) >= num_clusters
    ):
        raise ValueError(
            f"cluster ids must lie in 0..{num_clusters - 1}; got "
            f"{int(cluster_ids.min())}..{int(cluster_ids.max())}"
        )
    return F.cross_entropy(logits.float(), cluster_ids.long())  # (B·V, K) logits
