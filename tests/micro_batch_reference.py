"""What gradient caching must equal, and the small models and batches its checks use (the tests
and benchmarks/gpu_micro_batch_check.py): one graph over the same micro-batches."""

from __future__ import annotations

import torch
from torch import nn

from clinfo_ray.config import TrainConfig
from clinfo_ray.losses import Prototypes
from clinfo_ray.model import build_model
from clinfo_ray.training.grad_cache import concat_outputs
from clinfo_ray.training.objective import PROTOTYPE_IDS, TrainModule, batch_loss

METHODS = ("simclr", "clinfonce", "clinfonce-kmeans", "supcon", "ce-clusters", "pcl")
NUM_CLUSTERS = 3
PCL_KS = (3, 5)


def config(method: str, batch: int, micro: int | None, **data: object) -> TrainConfig:
    """A tiny run's config: small_cnn of width 2 on 8-px views, D = 6."""
    return TrainConfig.from_dict(
        {
            "data": {
                "image_size": 8,
                "batch_size_per_worker": batch,
                "micro_batch_size": micro,
                **data,
            },
            "model": {"backbone": "small_cnn", "cnn_width": 2, "proj_hidden": 8, "proj_dim": 6},
            "loss": {"method": method, "pcl_ks": list(PCL_KS)},
        }
    )


def module_of(cfg: TrainConfig, dtype: torch.dtype = torch.float64, seed: int = 0) -> TrainModule:
    """The method's TrainModule with dropout (p = 0.3) after the encoder: the passes must draw
    the same masks. Every parameter and buffer equal for equal seeds."""
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    model.encoder = nn.Sequential(model.encoder, nn.Dropout(0.3))  # (B·V, feature_dim)
    num_clusters = NUM_CLUSTERS if cfg.loss.method == "ce-clusters" else None
    return TrainModule(model, num_clusters).to(dtype)


def batch_of(
    cfg: TrainConfig, rows: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[dict[str, torch.Tensor], Prototypes | None]:
    """A batch of ``rows`` images (cluster ids and labels shared across rows, some unlabelled)
    and, for pcl, prototypes with each image's cluster at every granularity."""
    gen = torch.Generator().manual_seed(seed)
    size = cfg.data.image_size
    batch = {
        "views": torch.rand(rows, cfg.data.views, 3, size, size, generator=gen).to(dtype),
        "index": torch.randperm(10 * rows, generator=gen)[:rows],
        "cluster": torch.randint(0, NUM_CLUSTERS, (rows,), generator=gen),
        "label": torch.randint(-1, 2, (rows,), generator=gen),  # -1: unlabelled
    }
    if cfg.loss.method != "pcl":
        return batch, None
    dim = cfg.model.proj_dim
    prototypes = Prototypes(
        tuple(torch.randn(k, dim, generator=gen).to(dtype) for k in PCL_KS),
        tuple((0.2 + torch.rand(k, generator=gen)).to(dtype) for k in PCL_KS),
    )
    batch[PROTOTYPE_IDS] = torch.stack(
        [torch.randint(0, k, (rows,), generator=gen) for k in PCL_KS], dim=1
    )  # (B, M)
    return batch, prototypes


def one_graph_backward(
    module: nn.Module,
    cfg: TrainConfig,
    batch: dict[str, torch.Tensor],
    prototypes: Prototypes | None,
    micro: int,
) -> torch.Tensor:
    """The reference: every micro-batch through the module with its graph kept, the loss of
    them all at once, one backward (BatchNorm statistics per micro-batch). Returns the loss."""
    views = batch["views"]
    enabled = cfg.autocast_bf16
    with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=enabled):
        out = concat_outputs([module(chunk) for chunk in views.split(micro)])
        loss = batch_loss(cfg, batch, out, prototypes)
    loss.backward()
    return loss.detach()


def gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None
    }


def buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in module.named_buffers()}
