"""PCL on two gloo ranks on the CPU: the loss and DDP-averaged gradients equal one process on
the whole batch, and rank 0's prototypes reach rank 1 whole."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clinfo_ray.config import KMeansSettings
from clinfo_ray.losses import Prototypes, pcl_loss
from clinfo_ray.training.cluster_state import prototype_kmeans
from clinfo_ray.training.embedding import SplitEmbedding
from tests.gloo import finish_rank, run_ranks

WORLD, ROWS, VIEWS, TAU = 2, 4, 2, 0.2
SIZES = (3, 5)
N, DIM = 60, 5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, DIM)).double()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Prototypes]:
    """The global batch: x (W·ROWS, V, 6), index (W·ROWS,), ids (W·ROWS, M); the prototypes."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * ROWS, VIEWS, 6, dtype=torch.float64, generator=gen)
    index = torch.randperm(50, generator=gen)[: WORLD * ROWS]
    ids = torch.stack([torch.randint(0, k, (WORLD * ROWS,), generator=gen) for k in SIZES], 1)
    centroids = tuple(
        nn.functional.normalize(torch.randn(k, DIM, dtype=torch.float64, generator=gen), dim=1)
        for k in SIZES
    )
    phis = tuple(0.1 + 0.3 * torch.rand(k, dtype=torch.float64, generator=gen) for k in SIZES)
    return x, index, ids, Prototypes(centroids, phis)


def _loss_and_grads(
    model: nn.Module, x: torch.Tensor, index: torch.Tensor, ids: torch.Tensor, protos: Prototypes
) -> dict[str, torch.Tensor]:
    b, v, d = x.shape
    projections = model(x.reshape(b * v, d)).reshape(b, v, -1)
    loss = pcl_loss(projections, index, TAU, prototypes=protos, cluster_ids=ids)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return {"loss": loss.detach(), **grads}


def _embedding() -> SplitEmbedding:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return SplitEmbedding(np.arange(N), x, x, np.zeros(N, dtype=np.int64))


def _kmeans(rank_: int) -> dict[str, torch.Tensor]:
    embedding = _embedding() if rank_ == 0 else None
    settings = KMeansSettings(seed=0, niter=5)
    levels = prototype_kmeans(
        embedding, N, (4, 7), settings, 1, temperature=0.1, dim=DIM, device=torch.device("cpu")
    )
    return {
        "assignments": levels.assignments,
        **{f"centroids{m}": c for m, c in enumerate(levels.prototypes.centroids)},
        **{f"phi{m}": p for m, p in enumerate(levels.prototypes.concentrations)},
    }


def _worker(rank_: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank_, world_size=WORLD)
    x, index, ids, protos = _inputs()
    mine = slice(rank_ * ROWS, (rank_ + 1) * ROWS)
    ddp = DistributedDataParallel(_model())
    got = _loss_and_grads(ddp, x[mine], index[mine], ids[mine], protos)
    results = {
        "loss": {k.removeprefix("module."): v for k, v in got.items()},
        "kmeans": _kmeans(rank_),
    }
    torch.save(results, Path(out) / f"rank{rank_}.pt")
    finish_rank()


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    ranks = run_ranks(_worker, tmp_path, world=WORLD)
    single = _loss_and_grads(_model(), *_inputs())
    mean_loss = sum(r["loss"]["loss"] for r in ranks) / WORLD
    torch.testing.assert_close(mean_loss, single["loss"], rtol=1e-10, atol=1e-12)
    for key, value in single.items():
        if key != "loss":  # DDP averaged: every rank holds the single-process gradient
            for r in ranks:
                torch.testing.assert_close(r["loss"][key], value, rtol=1e-9, atol=1e-12)

    alone = _kmeans(0)  # world size 1: what rank 0 computes and broadcasts
    for r in ranks:
        assert r["kmeans"].keys() == alone.keys()
        for key, value in alone.items():
            assert torch.equal(r["kmeans"][key], value), key
