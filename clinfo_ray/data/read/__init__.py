"""Reading datasets for training: decode, augment, the per-rank stream, the worker cache."""
