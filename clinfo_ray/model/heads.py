"""The projection head of SimCLR: feature_dim -> hidden -> out_dim.

Linear -> BatchNorm1d -> ReLU -> Linear (the first linear has no bias when BN follows it, as
BN's shift replaces it). The output is not normalised here: the loss (and k-means) normalises
the rows it uses.
"""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """(N, in_dim) -> (N, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
        self.mlp = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)
