"""Helpers for the tests that run torch.distributed on gloo ranks in processes of their own."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port free on loopback now (for a rendezvous, or a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(worker: Callable[..., None], out: Path, *args: Any, world: int = 2) -> list[Any]:
    """Spawn ``worker(rank, port, *args, str(out))`` on ``world`` processes and return what
    each rank saved as ``out/rank{r}.pt`` (loaded with weights_only=True), in rank order."""
    mp.spawn(worker, args=(free_port(), *args, str(out)), nprocs=world, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(world)]
