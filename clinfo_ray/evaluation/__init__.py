"""Evaluation of frozen encoder features: weighted kNN, the linear probe, and the eval command.

``knn`` (numpy + faiss) and ``linear_probe`` (torch) never import Ray; the training loop calls
:func:`clinfo_ray.evaluation.knn.knn_top1` on rank 0. ``features`` extracts a checkpoint's
features over Ray Data and ``evaluate`` joins the three. Nothing is imported here, so that
``clinfo-ray --help`` (which imports ``evaluation.cli``) stays fast: import the modules.
"""
