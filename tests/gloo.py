"""Helpers for the tests that run torch.distributed on gloo ranks in processes of their own."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
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


def finish_rank() -> NoReturn:
    """The end of a spawned rank, once it has saved its results: a barrier (no peer is still in
    a collective), the group destroyed, then the process leaves without Python's finalisation.
    Tearing gloo down during finalisation can abort a rank now and then ("terminate called
    without an active exception", SIGABRT; seen once in a full suite under load), which fails
    a test whose results were already right."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
