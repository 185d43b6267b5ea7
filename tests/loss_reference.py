"""Slow, obviously right float64 references for the loss tests (no chunking, no tricks)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cl_infonce_reference(
    features: torch.Tensor,
    cluster_ids: torch.Tensor,
    temperature: float,
    base_temperature: float | None = None,
) -> torch.Tensor:
    """The issue's definition, written as a double loop over anchors and candidates."""
    num_images, num_views, _ = features.shape
    z = F.normalize(features.double(), dim=-1).reshape(num_images * num_views, -1)
    ids = [int(cluster_ids[i // num_views]) for i in range(num_images * num_views)]
    n = z.shape[0]
    losses = []
    for a in range(n):
        candidates = [k for k in range(n) if k != a]
        positives = [p for p in candidates if ids[p] == ids[a]]
        if not positives:
            continue
        sims = {k: torch.dot(z[a], z[k]) / temperature for k in candidates}
        log_denominator = torch.logsumexp(torch.stack([sims[k] for k in candidates]), dim=0)
        terms = [sims[p] - log_denominator for p in positives]
        losses.append(-torch.stack(terms).sum() / len(positives))
    if not losses:
        return features.double().sum() * 0.0  # zero, still attached to the graph
    scale = temperature / (base_temperature if base_temperature is not None else temperature)
    return scale * torch.stack(losses).mean()


def nt_xent(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent for two views: cross-entropy of each view against its partner."""
    num_images = features.shape[0]
    z = F.normalize(features.double(), dim=-1)
    z = torch.cat([z[:, 0], z[:, 1]])  # (2B, D): all first views, then all second views
    logits = z @ z.T / temperature
    logits.fill_diagonal_(-math.inf)
    partner = torch.cat([torch.arange(num_images, 2 * num_images), torch.arange(num_images)])
    return F.cross_entropy(logits, partner)


def supcon(
    features: torch.Tensor, labels: torch.Tensor, temperature: float, base_temperature: float
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) with a dense mask."""
    num_images, num_views, _ = features.shape
    z = F.normalize(features.double(), dim=-1).transpose(0, 1).reshape(num_views * num_images, -1)
    lab = labels.repeat(num_views)  # view-major order, as in the SupCon paper's code
    logits = z @ z.T / temperature
    not_self = ~torch.eye(len(lab), dtype=torch.bool)
    positive = (lab[:, None] == lab[None, :]) & not_self
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, -math.inf), 1, keepdim=True)
    mean_log_prob_pos = (log_prob * positive).sum(1) / positive.sum(1)
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def proto_nce_reference(
    features: torch.Tensor,
    cluster_ids: torch.Tensor,
    centroids: list[torch.Tensor],
    concentrations: list[torch.Tensor],
) -> torch.Tensor:
    """PCL's ProtoNCE as a loop over granularities, anchors and prototypes: for each view v of
    image b, -log softmax_j(<v, c_j> / φ_j) at its image's cluster; mean over anchors, then m."""
    num_images, num_views, _ = features.shape
    per_level = []
    for m, (protos, phi) in enumerate(zip(centroids, concentrations, strict=True)):
        losses = []
        for b in range(num_images):
            for v in range(num_views):
                z = features[b, v].double()
                z = z / torch.sqrt(torch.dot(z, z))
                logits = [torch.dot(z, protos[j].double()) / phi[j] for j in range(len(phi))]
                log_denominator = torch.logsumexp(torch.stack(logits), dim=0)
                losses.append(log_denominator - logits[int(cluster_ids[b, m])])
        per_level.append(torch.stack(losses).mean())
    return torch.stack(per_level).mean()
