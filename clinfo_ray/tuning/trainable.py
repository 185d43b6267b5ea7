"""The Ray Tune trainable of a search: one whole Ray Train run per trial, and its clean stop.

With Ray Train V2 a ``TorchTrainer`` runs inside a Tune *function trainable*: the trial's
actor calls ``fit()``, which starts a Train controller actor, which reserves the workers'
placement group. Rank 0's metrics reach Tune through ``TuneReportCallback``.

The known trap (ray-project/ray#54305): when Tune stops a trial itself (ASHA's early stop, or
the stop at ``max_t`` that may come before ``fit()`` has returned), it ends the trial's actor.
The controller dies with its owner, but the workers' placement group lives as long as the
driver's job: the CPUs stay reserved and the next trial waits for them forever. Ray's own
cleaner (a detached actor that watches the controller) asks the state API, which only a Ray
with its dashboard serves. So a trial stops its own Train run: the report callback hands the
trial the controller's handle along with the first metrics, and the trial's ``cleanup()``
(which Tune calls before ending the actor) aborts the controller, which shuts its workers down,
removes the placement group and stops Ray's cleaner, before the actor goes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from clinfo_ray.training.launch import train
from clinfo_ray.tuning.trial import TrialPlan, with_shared_clusters

log = logging.getLogger(__name__)

# The trial's actor only drives the run (the Train workers reserve their own placement group):
# a token of CPU, since Tune refuses a request of nothing.
TRIAL_ACTOR_RESOURCES = {"CPU": 0.001}
# Carries the controller's handle from the report callback to the trial (removed there: it
# never reaches Tune's results).
CONTROLLER_KEY = "__clinfo_train_controller"
ABORT_TIMEOUT_S = 120.0

# Set in a trial's actor when Tune stops the trial: the Train run's end is then expected.
_stopping = threading.Event()


class ReportToTune(TuneReportCallback):
    """Tune's report callback, adding the controller's handle to what it passes on."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
        rank0 = {**metrics[0], CONTROLLER_KEY: ray.get_runtime_context().current_actor}
        super().after_report(run_context, [rank0, *metrics[1:]], checkpoint)


class StopsItsTrainRun:
    """Mixed into the trial's function trainable: keeps the controller's handle and aborts
    the Train run when Tune stops the trial."""

    _controller: Any = None

    def step(self) -> dict[str, Any]:
        result = super().step()  # type: ignore[misc]
        handle = result.pop(CONTROLLER_KEY, None)
        if handle is not None:
            self._controller = handle
        return result

    def cleanup(self) -> None:
        if self._controller is not None:
            _stopping.set()
            abort_train_run(self._controller)
        super().cleanup()  # type: ignore[misc]


def abort_train_run(controller: Any, timeout_s: float = ABORT_TIMEOUT_S) -> None:
    """Abort a Train run by its controller and wait until it is gone (a run already over
    answers at once). The controller may be blocked handing a report to Tune (a queue of one
    that nobody reads any more): the queue is drained meanwhile."""
    from ray.train._internal.session import get_session

    session = get_session()
    assert session is not None, "a trial's cleanup runs in its Tune session"
    reports = session._get_or_create_inter_actor_queue()
    aborted = controller.abort.remote()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, _ = ray.wait([aborted], timeout=0.5)
        if done:
            break
        while not reports.empty():
            try:
                reports.get_nowait()
            except Exception:  # ray.util.queue.Empty: someone else took it
                break
    else:
        log.warning("the Train run did not stop within %.0f s", timeout_s)
        return
    try:
        ray.get(aborted)
    except ray.exceptions.RayActorError:
        pass  # the controller exits at the end of abort(): its death is the answer


def run_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """The trial's body: its config from the drawn values, the shared clusters, then a whole
    training run reporting every epoch to Tune."""
    quiet_ray_data()
    trial_id = tune.get_context().get_trial_id()
    cfg = with_shared_clusters(plan.trial_config(config, trial_id), plan.clusters_dir)
    try:
        train(cfg, callbacks=[ReportToTune()])
    except Exception:
        if _stopping.is_set():
            return  # Tune stopped the trial and we aborted its run: not a failure
        raise


def quiet_ray_data() -> None:
    """As in the driver (connect_ray): no progress bars, no line per dataset execution."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"


# wrap_function() builds the trial's trainable class on these bases.
run_trial.__mixins__ = (StopsItsTrainRun,)  # type: ignore[attr-defined]


def make_trainable(plan: TrialPlan) -> Any:
    """The trainable a Tuner runs: ``run_trial`` with the plan, on a token of CPU."""
    return tune.with_resources(tune.with_parameters(run_trial, plan=plan), TRIAL_ACTOR_RESOURCES)
