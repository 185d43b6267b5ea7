"""Distributed training on Ray Train: the per-worker loop, its objective, logging and launch."""
