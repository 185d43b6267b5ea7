"""Join the Ray cluster a job runs on, or start a local one sized for the run."""

from __future__ import annotations

import logging
import math
import os

from clinfo_ray.config import TrainConfig

log = logging.getLogger(__name__)


def ensure_ray(address: str | None, cfg: TrainConfig | None = None) -> None:
    """``ray.init`` once: the given address, else RAY_ADDRESS (set by ``ray job submit``), else
    a new local cluster. A local cluster gets enough logical CPUs for the Train workers plus two
    for Ray Data's tasks, so a 2-core machine does not hang with 2 workers × 1 CPU. It runs the
    dashboard on loopback: Ray Train's placement-group cleaner asks the state API, which the
    dashboard serves, every second (without it, it logs a warning each time)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    cpus = os.cpu_count() or 1
    if cfg is not None:
        cpus = max(cpus, math.ceil(cfg.run.num_workers * cfg.run.cpus_per_worker) + 2)
    context = ray.init(
        address="local", num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1"
    )
    if context.dashboard_url:
        log.info("Ray dashboard of this run: http://%s", context.dashboard_url)
