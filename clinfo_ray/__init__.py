"""clinfo-ray: weakly-supervised contrastive representations (Cl-InfoNCE) trained on Ray."""

__version__ = "0.1.0"
