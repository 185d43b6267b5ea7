"""Losses: Cl-InfoNCE (which contains SimCLR and SupCon) and the cluster cross-entropy baseline."""

from clinfo_ray.losses.cl_infonce import ClInfoNCELoss, cl_infonce
from clinfo_ray.losses.cluster_ce import ClusterCrossEntropy, cluster_cross_entropy

__all__ = ["ClInfoNCELoss", "ClusterCrossEntropy", "cl_infonce", "cluster_cross_entropy"]
