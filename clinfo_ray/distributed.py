"""Everything that touches ``torch.distributed`` lives here.

Each helper works without a process group (world size 1), so the losses that call them stay
correct in a single process and in tests.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=device))
    return [int(s.item()) for s in sizes]  # CPU-GPU sync point: one per gather


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """all_gather along dim 0 for per-rank row counts ``sizes``; returns (sum(sizes), ...)."""
    longest = max(sizes)
    if x.shape[0] < longest:  # all_gather needs equal shapes: pad, gather, cut
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's rows; the backward sums the gradient over ranks, then slices.

    Each rank's loss depends on every rank's rows, so the gradient of the local rows is the sum
    over ranks of each rank's gradient for them: an all-reduce before taking the local slice.
    Without it the gradients are silently wrong.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], offset: int) -> torch.Tensor:
        ctx.offset, ctx.n = offset, x.shape[0]
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.offset : ctx.offset + ctx.n], None, None


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows of every rank, in rank order, differentiable; and the offset of this rank's rows.

    Ranks may hold different numbers of rows. At world size 1 it returns ``x`` itself.
    """
    if not is_distributed():
        return x, 0
    sizes = _gather_sizes(x.shape[0], x.device)
    offset = sum(sizes[: rank()])
    return _GatherWithGrad.apply(x, sizes, offset), offset


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank, in rank order, without gradient (for integer ids and labels)."""
    if not is_distributed():
        return x
    with torch.no_grad():
        return _gather_padded(x, _gather_sizes(x.shape[0], x.device))


def gather_to_rank0(x: torch.Tensor) -> torch.Tensor | None:
    """Rows of every rank, in rank order, on rank 0 only; None on the other ranks; ``x`` itself
    at world size 1. Ranks may hold different numbers of rows (same trailing shape and dtype).

    For results only rank 0 reads (a split's embeddings): each rank sends its rows once, rather
    than every rank receiving every row as :func:`gather_no_grad` does.
    """
    if not is_distributed():
        return x
    with torch.no_grad():
        sizes = _gather_sizes(x.shape[0], x.device)
        longest = max(sizes)
        if x.shape[0] < longest:  # gather needs equal shapes: pad, gather, cut
            x = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in sizes] if rank() == 0 else None
        dist.gather(x, parts, dst=0)
        if parts is None:
            return None
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def broadcast_from_rank0(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``x`` on every rank (same shape and dtype everywhere); ``x`` itself at size 1."""
    if is_distributed():
        dist.broadcast(x, src=0)
    return x


def broadcast_buffers_from_rank0(module: nn.Module) -> None:
    """Overwrite every rank's buffers of ``module`` (BatchNorm running statistics, ...) with
    rank 0's, in place; nothing at world size 1.

    DDP keeps the parameters equal on every rank, but each rank updates its buffers from its
    own batches, so an eval-mode forward differs between ranks unless they are synced first.
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def gradient_sync_deferred(module: nn.Module, defer: bool) -> AbstractContextManager[None]:
    """Around a forward and its backward: with ``defer``, DDP's all-reduce of the gradients is
    skipped (``no_sync``: they accumulate on this rank, and the next backward outside this
    context reduces their sum); otherwise, or when ``module`` is not DDP, nothing."""
    if defer and isinstance(module, DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


def mean_over_ranks(values: Sequence[float], device: torch.device) -> float:
    """Mean of every rank's ``values`` together (each value weighs the same, so ranks with
    more values weigh more); nan when no rank has any. The values themselves at world size 1.

    ``device``: where the all-reduce runs (the process group's backend must support it).
    """
    total = torch.tensor([math.fsum(values), len(values)], dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    s, n = total.tolist()  # CPU-GPU sync point
    return s / n if n else math.nan


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def until_any_rank_ends(batches: Iterable[T], device: torch.device) -> Iterator[T]:
    """The items of ``batches`` while every rank still has one: the ranks take equal numbers
    of steps when their shares differ a little (one all-reduce of one integer per item)."""
    items = iter(batches)
    while True:
        item = next(items, None)
        if is_distributed():
            have = torch.tensor([0 if item is None else 1], device=device)
            dist.all_reduce(have, op=dist.ReduceOp.MIN)
            if int(have.item()) == 0:  # CPU-GPU sync point, once a step
                return
        elif item is None:
            return
        yield item  # type: ignore[misc]
