"""What every command and job shares: the one Ray connection policy, the logging setup, the
check of a submitted job's locations, and how an error ends a command (one line on stderr)."""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clinfo_ray.config import TrainConfig

log = logging.getLogger(__name__)

AUTH_MODE_VAR = "RAY_AUTH_MODE"  # Ray's switch: "token" or "disabled"


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) to stderr, one format for every command and job."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing, at INFO


def require_token_auth() -> bool:
    """Ray's token authentication for the cluster this process is about to start, unless the
    user chose otherwise; whether it is on.

    ``RAY_AUTH_MODE`` unset becomes ``token`` (in this process and every process Ray starts from
    it); a value the user set, ``disabled`` included, is kept. Ray reads the mode once, when it
    is imported, so after setting it Ray's configuration is read again (what Ray does itself when
    it switches the mode): otherwise the head would require a token that this driver neither
    makes nor sends. ``ray.init`` of a new local cluster then makes the token if there is none
    (``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``,
    which it writes; ``ray get-auth-token`` prints it).
    """
    if AUTH_MODE_VAR not in os.environ:
        os.environ[AUTH_MODE_VAR] = "token"
        from ray._raylet import Config  # type: ignore[attr-defined]  # compiled: no stub

        Config.initialize("")
    return os.environ[AUTH_MODE_VAR].strip().lower() == "token"


def connect_ray(address: str | None = None, *, cpus_needed: float = 0.0) -> None:
    """``ray.init`` once: the given address, else ``RAY_ADDRESS`` (which ``ray job submit``
    sets), else a new local cluster sized for the work.

    A local cluster gets at least ``cpus_needed`` + 2 logical CPUs (the Train workers' CPUs plus
    two for Ray Data's tasks: with 2 workers x 1 CPU on a 2-core machine the read tasks would
    otherwise never run), token authentication unless ``RAY_AUTH_MODE`` says otherwise
    (:func:`require_token_auth`), and its dashboard, which also serves the job API, on
    127.0.0.1 only (Ray Train's placement-group cleaner asks the state API, which the dashboard
    serves). Joining a cluster changes no setting: its mode and token come from the environment
    (a job's driver inherits the cluster's). Ray Data's progress bars are off: the commands
    print one line per epoch or stage instead.
    """
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, configure_logging=False)
        else:
            token_auth = require_token_auth()
            cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed) + 2 if cpus_needed else 0)
            context = ray.init(
                address="local",
                num_cpus=cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                configure_logging=False,
            )
            if context.dashboard_url:
                log.info(
                    "Ray dashboard: http://%s (token authentication %s)",
                    context.dashboard_url,
                    "on: `ray get-auth-token` prints the token" if token_auth else "off",
                )
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False
    # Ray Data's per-dataset INFO lines ("execution finished"), and its one warning that the
    # bars are off, are noise beside the commands' own lines; its other warnings stay.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    data_context.print_on_execution_start = False


# Ray's job supervisor hands a submitted job's entrypoint its job config (runtime env, metadata
# with the submission id) in this variable, before any ray.init; the job's tasks and actors do
# not get it, and a driver started any other way does not have it.
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def submitted_job() -> str | None:
    """The submission id when this process is the entrypoint of a ``ray job submit`` job
    (``"?"`` when Ray gave none), else None."""
    import json

    raw = os.environ.get(JOB_CONFIG_VAR)
    if not raw:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        metadata = {}
    return str(metadata.get("job_submission_id") or "?")


def is_shared_location(location: str) -> bool:
    """An absolute path or a URI (``s3://bucket/...``): what names the same data on every node."""
    return "://" in location or os.path.isabs(location)


def check_job_locations(locations: dict[str, Any]) -> None:
    """Inside a submitted job, a one-line ConfigError for the first relative location
    (name -> a location, a list of them, or None); outside one, nothing.

    A job runs in Ray's temporary copy of its ``--working-dir`` upload (which leaves out what
    .gitignore names, ``data/`` and ``runs/``), deleted when the job ends and not the folder
    other nodes see: a relative input is not found there, a relative output is lost."""
    job = submitted_job()
    if job is None:
        return
    from clinfo_ray.config import ConfigError

    for name, value in locations.items():
        for location in value if isinstance(value, list | tuple) else [value]:
            if location is None or is_shared_location(str(location)):
                continue
            raise ConfigError(
                f"{name}: {str(location)!r} is relative, but this runs inside the Ray job "
                f"{job}, whose working directory is Ray's temporary copy of the upload, not "
                "seen by other nodes and deleted with the job: pass an absolute path every "
                "node mounts (e.g. /mnt/shared/...) or a bucket URI (s3://...)",
                key=name if "." in name and not name.startswith("-") else None,
            )


def train_locations(cfg: TrainConfig, *, output: bool = True) -> dict[str, Any]:
    """The locations a training config reads (and, with ``output``, writes)."""
    found: dict[str, Any] = {"data.dataset_dir": cfg.data.dataset_dir}
    if output:
        found["run.output_dir"] = cfg.run.output_dir
    found["clusters.table_path"] = cfg.clusters.table_path
    return found


def fail(command: str, message: object, status: int = 2) -> int:
    """One line on stderr naming the command; the exit status (2: bad input)."""
    import sys

    text = str(message).strip().splitlines()[0] if str(message).strip() else repr(message)
    print(f"clinfo-ray {command}: error: {text}", file=sys.stderr)
    return status
