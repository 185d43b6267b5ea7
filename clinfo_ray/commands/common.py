"""What every command and job shares: the one Ray connection policy, the logging setup, and
how an error ends a command (one line on stderr)."""

from __future__ import annotations

import logging
import math
import os

log = logging.getLogger(__name__)


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) to stderr, one format for every command and job."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing, at INFO


def connect_ray(address: str | None = None, *, cpus_needed: float = 0.0) -> None:
    """``ray.init`` once: the given address, else ``RAY_ADDRESS`` (which ``ray job submit``
    sets), else a new local cluster sized for the work.

    A local cluster gets at least ``cpus_needed`` + 2 logical CPUs (the Train workers' CPUs plus
    two for Ray Data's tasks: with 2 workers x 1 CPU on a 2-core machine the read tasks would
    otherwise never run) and its dashboard on 127.0.0.1 only (Ray Train's placement-group
    cleaner asks the state API, which the dashboard serves). Ray Data's progress bars are off:
    the commands print one line per epoch or stage instead.
    """
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, configure_logging=False)
        else:
            cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed) + 2 if cpus_needed else 0)
            context = ray.init(
                address="local",
                num_cpus=cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                configure_logging=False,
            )
            if context.dashboard_url:
                log.info("Ray dashboard: http://%s", context.dashboard_url)
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False


def fail(command: str, message: object, status: int = 2) -> int:
    """One line on stderr naming the command; the exit status (2: bad input)."""
    import sys

    text = str(message).strip().splitlines()[0] if str(message).strip() else repr(message)
    print(f"clinfo-ray {command}: error: {text}", file=sys.stderr)
    return status
