"""clinfo-ray: weakly-supervised contrastive representations (Cl-InfoNCE) trained on Ray.

``clinfo_ray.load_encoder(path)`` (:mod:`clinfo_ray.export`) is imported on first use, so that
``import clinfo_ray`` (and every command's start) stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clinfo_ray.export import load_encoder

__version__ = "0.1.0"
__all__ = ["__version__", "load_encoder"]


def __getattr__(name: str) -> Any:
    if name == "load_encoder":
        from clinfo_ray.export import load_encoder

        return load_encoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
