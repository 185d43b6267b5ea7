"""Two gloo ranks on the CPU: loss and DDP-averaged gradients equal one process on the batch."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clinfo_ray.distributed import gather_no_grad, gather_with_grad, rank, world_size
from clinfo_ray.losses import cl_infonce
from tests.gloo import finish_rank, run_ranks

WORLD = 2
TAU = 0.2

# name -> (rows of the global batch each rank holds, views, cluster ids of the global batch)
# Cluster ids are laid out so that positives cross ranks: a mask built from local ids against
# global logits gives a different answer.
SCENARIOS: dict[str, tuple[list[int], int, list[int]]] = {
    "equal": ([4, 4], 2, [0, 0, 1, 2, 1, 3, 3, 0]),
    "unequal": ([2, 5], 2, [5, 1, 1, 5, 9, 9, 1]),
    "single_view": ([3, 3], 1, [0, 1, 2, 0, 4, 2]),  # anchors without positives differ per rank
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5)).double()


def _batch(name: str) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    rows, views, ids = SCENARIOS[name]
    gen = torch.Generator().manual_seed(len(name))
    x = torch.randn(sum(rows), views, 6, dtype=torch.float64, generator=gen)
    return x, torch.tensor(ids), rows, views


def _loss_and_grads(
    model: nn.Module, x: torch.Tensor, ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    b, v, d = x.shape
    loss = cl_infonce(model(x.reshape(b * v, d)).reshape(b, v, -1), ids, TAU)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return {"loss": loss.detach(), **grads}


def _worker(rank_: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank_, world_size=WORLD)
    results: dict[str, dict[str, torch.Tensor]] = {}
    for name in SCENARIOS:
        x, ids, rows, _ = _batch(name)
        start = sum(rows[:rank_])
        ddp = DistributedDataParallel(_model())
        got = _loss_and_grads(ddp, x[start : start + rows[rank_]], ids[start : start + rows[rank_]])
        results[name] = {k.removeprefix("module."): v for k, v in got.items()}
    # The helpers themselves: rank order, offsets, and gradient summed over ranks.
    local = torch.full((rank_ + 1, 2), float(rank_ + 1), dtype=torch.float64, requires_grad=True)
    gathered, offset = gather_with_grad(local)
    (gathered.sum() * (rank_ + 1)).backward()  # d/d(local) = sum over ranks of (r+1) = 3
    results["helpers"] = {
        "gathered": gathered.detach(),
        "offset": torch.tensor(offset),
        "grad": local.grad,
        "ids": gather_no_grad(torch.arange(rank_ + 2) + 10 * rank_),
        "rank_world": torch.tensor([rank(), world_size()]),
    }
    torch.save(results, Path(out) / f"rank{rank_}.pt")
    finish_rank()


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    ranks = run_ranks(_worker, tmp_path, world=WORLD)
    for name in SCENARIOS:
        x, ids, _, _ = _batch(name)
        single = _loss_and_grads(_model(), x, ids)
        mean_loss = sum(r[name]["loss"] for r in ranks) / WORLD
        torch.testing.assert_close(mean_loss, single["loss"], rtol=1e-10, atol=1e-12)
        for key, value in single.items():
            if key == "loss":
                continue
            for r in ranks:  # DDP averaged: every rank holds the single-process gradient
                torch.testing.assert_close(r[name][key], value, rtol=1e-9, atol=1e-12)

    for r, got in enumerate(ranks):
        helpers = got["helpers"]
        expected_rows = torch.cat([torch.full((k + 1, 2), float(k + 1)) for k in range(WORLD)])
        torch.testing.assert_close(helpers["gathered"], expected_rows.double())
        assert int(helpers["offset"]) == sum(k + 1 for k in range(r))
        torch.testing.assert_close(helpers["grad"], torch.full((r + 1, 2), 3.0).double())
        assert helpers["ids"].tolist() == [0, 1, 10, 11, 12]
        assert helpers["rank_world"].tolist() == [r, WORLD]


def test_helpers_without_process_group() -> None:
    x = torch.randn(3, 4)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0
    assert gather_no_grad(x) is x
    assert (rank(), world_size()) == (0, 1)
