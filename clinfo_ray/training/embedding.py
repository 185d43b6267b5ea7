"""Embeddings of a whole split on the Train workers, gathered to rank 0.

Every worker has the whole (unsplit, unaugmented) split and runs the model, with rank 0's
buffers, on its own share (rows with ``index % world == rank``); the shares are then gathered
to rank 0, the one rank that uses them (online kNN, k-means), so the result is complete and
exact: no row is dropped to even out the workers, as an equal split would.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clinfo_ray.data.read.stream import IMAGE_U8, INDEX
from clinfo_ray.distributed import broadcast_buffers_from_rank0, gather_to_rank0, rank, world_size
from clinfo_ray.model import ContrastiveModel


@dataclass(frozen=True)
class SplitEmbedding:
    """One split, rows ordered by ``index`` (the image's row in its split, ids sorted)."""

    index: np.ndarray  # (n,) int64
    features: np.ndarray  # (n, D) float32: encoder output, before the head
    projections: np.ndarray  # (n, P) float32: head output, L2-normalised
    labels: np.ndarray  # (n,) int64, -1 where unlabelled


@torch.no_grad()
def embed_split(
    model: ContrastiveModel, batches: Iterable[dict[str, torch.Tensor]], device: torch.device
) -> SplitEmbedding | None:
    """Run ``model`` (unwrapped: no DDP in eval) over one unaugmented split on every rank; the
    whole split's embedding on rank 0, None on the others (every rank must call it).

    ``batches``: the whole split, each batch (one model call) with ``image_u8``, ``index`` and
    ``label`` (a dataset shard's ``iter_torch_batches``, or ``InMemorySplit.in_order``).

    Every rank first takes rank 0's buffers (BatchNorm running statistics): each rank updated
    its own during training, and the rows of one split must all be embedded by the same model.
    """
    broadcast_buffers_from_rank0(model)
    was_training = model.training
    model.eval()
    me, world = rank(), world_size()
    parts: dict[str, list[torch.Tensor]] = {"index": [], "features": [], "proj": [], "label": []}
    for batch in batches:
        mine = batch[INDEX] % world == me
        if not bool(mine.any()):
            continue
        images = batch[IMAGE_U8][mine].to(device, non_blocking=True).float().div_(255.0)
        out = model(images)
        parts["index"].append(batch[INDEX][mine].to(device))
        parts["label"].append(batch["label"][mine].to(device))
        parts["features"].append(out.features.float())
        parts["proj"].append(F.normalize(out.projections.float(), dim=-1))
    model.train(was_training)
    widths = {"index": None, "label": None, "features": model.feature_dim, "proj": model.proj_dim}
    gathered: dict[str, torch.Tensor] = {}
    for key, chunks in parts.items():
        local = torch.cat(chunks) if chunks else _empty(widths[key], device)
        rows = gather_to_rank0(local)
        if rows is not None:
            gathered[key] = rows.cpu()
    if me != 0:
        return None
    order = torch.argsort(gathered["index"])
    return SplitEmbedding(
        index=gathered["index"][order].numpy(),
        features=gathered["features"][order].numpy(),
        projections=gathered["proj"][order].numpy(),
        labels=gathered["label"][order].numpy(),
    )


def _empty(width: int | None, device: torch.device) -> torch.Tensor:
    if width is None:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.empty(0, width, dtype=torch.float32, device=device)
