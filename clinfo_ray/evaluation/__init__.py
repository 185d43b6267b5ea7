"""Evaluation of frozen encoder features: weighted kNN, the linear probe, and the eval command.

``knn`` and ``linear_probe`` are pure numpy / faiss / torch (the training loop calls
:func:`knn_top1` on rank 0); ``features`` and ``evaluate`` read a checkpoint over Ray Data.
"""

from clinfo_ray.evaluation.knn import knn_predict, knn_top1
from clinfo_ray.evaluation.linear_probe import linear_probe

__all__ = ["knn_predict", "knn_top1", "linear_probe"]
