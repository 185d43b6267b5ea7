"""Losses: Cl-InfoNCE (which contains SimCLR and SupCon), PCL's InfoNCE + ProtoNCE, and the
cluster cross-entropy baseline."""

from clinfo_ray.losses.cl_infonce import ClInfoNCELoss, cl_infonce
from clinfo_ray.losses.cluster_ce import ClusterCrossEntropy, cluster_cross_entropy
from clinfo_ray.losses.pcl import PCLLoss, Prototypes, concentration, pcl_loss, proto_nce

__all__ = [
    "ClInfoNCELoss",
    "ClusterCrossEntropy",
    "PCLLoss",
    "Prototypes",
    "cl_infonce",
    "cluster_cross_entropy",
    "concentration",
    "pcl_loss",
    "proto_nce",
]
