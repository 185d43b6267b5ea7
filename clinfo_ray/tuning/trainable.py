"""The Ray Tune trainable of a search: one whole Ray Train run per trial, and its clean stop.

With Ray Train V2 a ``TorchTrainer`` runs inside a Tune *function trainable*: the trial's
actor calls ``fit()``, which starts a Train controller actor, which reserves the workers'
placement group. Rank 0's metrics reach Tune through ``TuneReportCallback``.

The known trap (ray-project/ray#54305): when Tune stops a trial itself (ASHA's early stop, the
stop at ``max_t`` that may come before ``fit()`` has returned, the end of an experiment), it
ends the trial's actor. The controller and its workers die with it (their owner), but the
workers' placement group lives as long as the driver's job: the CPUs stay reserved and the
next trial waits for them forever. Ray's own cleaner (a detached actor that watches the
controller) asks the state API, which only a Ray with its dashboard serves. So a trial frees
its run itself, on both of the ways Tune ends a trial:

- Gracefully, between two results: Tune calls the trial's ``stop()``, so ``cleanup()``, which
  aborts the controller (its handle came with the first report): the controller shuts its
  workers down, removes the group and stops Ray's cleaner. An abort that has not finished
  within ``abort_timeout_s`` (the controller is stuck) is escalated: the controller is killed
  (its workers die with it), the group removed, and ``cleanup()`` raises
  :class:`TrainRunStopError` saying so, and naming anything still held.
- By force, before the first report: the actor runs one call at a time and ``step()`` waits for
  a report, so a trial whose run is still starting its workers or reading its data never gets
  its ``stop()``; Tune kills the actor instead (10 s after the stop at the end of an
  experiment, ``TUNE_FORCE_TRIAL_CLEANUP_S`` during one). So every run comes with a guard
  (:class:`RunGuard`, detached: it outlives the trial), which each worker tells, before its
  loop, which placement group it runs in; when the trial's process is gone, the guard removes
  any of those groups still held. (A run killed while its group is still pending, or before
  its workers reach their loop, has told the guard nothing, and Ray's public API names no
  group's creator: that group is left to Ray's own cleaner, which knows it once the workers
  have started, on a Ray with its dashboard, or else to the end of the driver's job.)

The end of ``fit()`` that the trial's own abort causes (its controller's death) is the expected
end of a stopped trial and stays quiet. Anything else the trial's function raised by then is a
genuine crash: ``cleanup()`` waits for the function to end after the abort and raises it
(logged too: Tune has already recorded the trial as stopped and ignores what ``stop()``
raises).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import ray
from ray import tune
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.placement_group import PlacementGroup, remove_placement_group

from clinfo_ray.training.launch import train
from clinfo_ray.tuning.trial import TrialPlan, with_shared_clusters

log = logging.getLogger(__name__)

# The trial's actor only drives the run (the Train workers reserve their own placement group):
# a token of CPU, since Tune refuses a request of nothing.
TRIAL_ACTOR_RESOURCES = {"CPU": 0.001}
# Carries the controller's handle and actor id from the report callback to the trial (removed
# there: it never reaches Tune's results).
CONTROLLER_KEY = "__clinfo_train_controller"
ABORT_TIMEOUT_S = 120.0
KILL_TIMEOUT_S = 10.0  # a killed controller is reported dead within this
RELEASE_TIMEOUT_S = 10.0  # a removed placement group reads REMOVED within this
FUNCTION_END_TIMEOUT_S = 10.0  # an aborted run's fit() raises, and the function ends, within this
GUARD_INTERVAL_S = 1.0  # how often a guard looks whether its trial is still there
GUARD_NAME = "clinfo-run-guard:"  # + trial id + a random suffix (``ray list actors`` shows it)


class TrainRunStopError(RuntimeError):
    """A trial's Train run did not end when it was aborted (what was done, what is held)."""


def _group_state(group: PlacementGroup) -> str:
    """CREATED, PENDING, ... or REMOVED (also for a group the table no longer lists)."""
    return str(ray.util.placement_group_table(group).get("state", "REMOVED"))


@ray.remote(num_cpus=0)
class RunGuard:
    """Removes the placement groups of a trial's Train run once the trial's process is gone.

    Detached, so it outlives the trial. The run's workers tell it, before their loop, which
    group they run in (:meth:`hold`; a run that restarts its workers gets a new group).
    :meth:`watch` waits until an object the trial's process owns can no longer be read (the
    process ended), removes each held group that is not removed yet and exits. A trial that
    ended normally or was stopped gracefully dismissed it in its ``cleanup()``. Started
    threaded, so that ``hold`` and ``release`` answer while ``watch`` waits.
    """

    def __init__(self, run_name: str, trial: list[ray.ObjectRef]) -> None:
        self._run_name = run_name
        self._trial = trial[0]  # owned by the trial's process (passed in a list: not resolved)
        self._groups: dict[str, PlacementGroup] = {}

    def hold(self, group: PlacementGroup) -> None:
        self._groups.setdefault(group.id.hex(), group)

    def release(self, timeout_s: float = RELEASE_TIMEOUT_S) -> dict[str, str]:
        """Remove every held group not removed yet; group id -> its state after (REMOVED,
        unless it was still there ``timeout_s`` later)."""
        for group in list(self._groups.values()):
            if _group_state(group) != "REMOVED":
                remove_placement_group(group)
        deadline = time.monotonic() + timeout_s
        while True:
            states = {gid: _group_state(group) for gid, group in list(self._groups.items())}
            if all(s == "REMOVED" for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(0.1)

    def watch(self, interval_s: float = GUARD_INTERVAL_S) -> None:
        try:
            while self._trial_is_there(interval_s):
                time.sleep(interval_s)
            groups = list(self._groups.values())
            if any(_group_state(group) != "REMOVED" for group in groups):
                log.warning(
                    "trial %s ended without stopping its Train run: removed its groups %s",
                    self._run_name,
                    self.release(),
                )
        finally:
            # killed by its own handle: exit_actor() from one thread of a threaded actor
            # does not end its process
            ray.kill(ray.get_runtime_context().current_actor)

    def _trial_is_there(self, wait_s: float) -> bool:
        try:
            ray.get(self._trial, timeout=wait_s)
        except GetTimeoutError:
            return True
        except ObjectLostError:  # OwnerDiedError: the trial's process is gone
            return False
        return True


class _TrialRun:
    """What a trial's process knows of its Train run. The searches run one trial per actor
    process (``reuse_actors=False``): one per process, shared by the trial's function (its own
    thread) and Tune's calls on the trial (``step``, ``cleanup``)."""

    def __init__(self) -> None:
        self.name = ""
        self.guard: Any = None
        self.function: threading.Thread | None = None  # the thread that started the run
        self.controller: Any = None
        self.controller_id: str | None = None
        self.aborted = threading.Event()  # the trial asked its controller to end
        self._token: ray.ObjectRef | None = None  # what the guard reads to see the trial lives

    def start_guard(self, name: str) -> Any:
        """The run's guard, started with the run (once per trial)."""
        if self.guard is None:
            self.name = name
            self._token = ray.put(name)
            # "DEFAULT": not in the trial's own placement group, which Tune removes with it
            self.guard = RunGuard.options(  # type: ignore[attr-defined]
                name=f"{GUARD_NAME}{name}:{uuid.uuid4().hex[:8]}",
                lifetime="detached",
                scheduling_strategy="DEFAULT",
                max_concurrency=4,
            ).remote(name, [self._token])
            self.guard.watch.remote()
            self.function = threading.current_thread()
        return self.guard

    def note_controller(self, handle: Any, actor_id: str) -> None:
        self.controller, self.controller_id = handle, actor_id

    def stop(self, timeout_s: float) -> TrainRunStopError | None:
        """Abort the run (a run already over answers at once); escalate an abort that has not
        finished within ``timeout_s``. The error to raise once the trial is cleaned up, or
        None. Without a report yet there is nothing to abort: the trial's function is over
        (Tune calls ``stop()`` between results only), and the guard sees to a group left."""
        if self.controller is None:
            return None
        self.aborted.set()
        try:
            aborted = self.controller.abort.remote()
        except RayActorError:
            return None  # gone already
        if _answered(aborted, timeout_s):
            _raise_unless_dead(aborted)
            return None
        return self._escalate(aborted, timeout_s)

    def _escalate(self, aborted: ray.ObjectRef, timeout_s: float) -> TrainRunStopError:
        """Kill the stuck controller (its workers die with it: it owns them), remove the
        run's placement groups, and say what was done and what is still held."""
        ray.kill(self.controller)
        controller_dead = _answered(aborted, KILL_TIMEOUT_S)  # fails once it is dead
        states = self.release()
        held = sorted(gid for gid, state in states.items() if state != "REMOVED")
        lines = [
            f"the Train run {self.name!r} did not stop within {timeout_s:g} s of its abort: "
            "its controller was killed"
            + ("" if controller_dead else f" but was still not dead {KILL_TIMEOUT_S:g} s later")
        ]
        if states:
            removed = sorted(gid for gid, state in states.items() if state == "REMOVED")
            lines.append(f"placement groups removed: {removed or 'none'}")
        else:
            lines.append("no placement group was known (its workers had not reached their loop)")
        if held:
            lines.append(f"still held: placement groups {held}")
        message = "; ".join(lines)
        log.error(message)
        return TrainRunStopError(message)

    def release(self) -> dict[str, str]:
        """Have the guard remove the run's groups; group id -> state ({} without a guard)."""
        if self.guard is None:
            return {}
        try:
            return dict(ray.get(self.guard.release.remote(), timeout=RELEASE_TIMEOUT_S + 5))
        except (RayActorError, GetTimeoutError) as err:
            log.error("the guard of run %r did not answer: %s", self.name, err)
            return {}

    def dismiss_guard(self) -> None:
        """At the end of a trial that ran its cleanup: the guard removes what is still held
        (nothing, after a normal end or a finished abort) and goes. Only a trial killed before
        its cleanup leaves its guard to watch."""
        if self.guard is None:
            return
        self.release()
        try:
            ray.kill(self.guard)
        except RayActorError:
            pass  # gone already
        self.guard = None

    def wait_for_function(self, timeout_s: float) -> None:
        """After an abort: until the trial's function has ended, so that what it raised is
        known to Tune's session when ``cleanup()`` asks."""
        thread = self.function
        if thread is None or thread is threading.current_thread() or not self.aborted.is_set():
            return
        thread.join(timeout_s)

    def ended_by_its_abort(self, err: BaseException) -> bool:
        """Whether ``err`` (or what caused it) is the controller's death the trial caused."""
        seen: BaseException | None = err
        for _ in range(8):  # Tune's session wraps the function's error
            if seen is None:
                return False
            if isinstance(seen, RayActorError):
                return self.aborted.is_set() and seen.actor_id == self.controller_id
            seen = seen.__cause__ or seen.__context__
        return False


_run = _TrialRun()


def _answered(ref: ray.ObjectRef, timeout_s: float) -> bool:
    """Whether the controller's call ``ref`` resolved (a value or an error) within
    ``timeout_s``. The controller may be blocked handing a report to Tune (a queue of one that
    nobody reads any more): the queue is drained meanwhile."""
    from ray.train._internal.session import get_session

    session = get_session()
    reports = session._get_or_create_inter_actor_queue() if session is not None else None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, _ = ray.wait([ref], timeout=0.5)
        if done:
            return True
        while reports is not None and not reports.empty():
            try:
                reports.get_nowait()
            except Exception:  # ray.util.queue.Empty: someone else took it
                break
    return False


def _raise_unless_dead(aborted: ray.ObjectRef) -> None:
    try:
        ray.get(aborted)
    except RayActorError:
        pass  # the controller exits at the end of abort(): its death is the answer


class ReportToTune(TuneReportCallback):
    """Tune's report callback, for a trial's run: it starts the run's guard (made in the
    trial, as the run starts), adds the controller's handle to what it passes on, and has
    every worker hand the guard its placement group before its loop."""

    def __init__(self) -> None:
        super().__init__()
        self._guard = _run.start_guard(tune.get_context().get_trial_id() or "trial")

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        context = ray.get_runtime_context()  # the controller's
        controller = (context.current_actor, context.get_actor_id())
        rank0 = {**metrics[0], CONTROLLER_KEY: controller}
        super().after_report(run_context, [rank0, *metrics[1:]], checkpoint)

    def before_train_loop(self) -> None:
        """On every worker (clinfo_ray.training.launch runs it): the guard learns the group."""
        group = ray.util.get_current_placement_group()
        if group is None:
            return
        try:
            ray.get(self._guard.hold.remote(group))
        except RayActorError as err:  # the run goes on; only a killed trial would leave it
            log.warning("the run's guard is gone; its placement group is not guarded: %s", err)


class StopsItsTrainRun:
    """Mixed into the trial's function trainable: keeps the controller's handle and stops the
    Train run when Tune stops the trial (see the module's docstring)."""

    abort_timeout_s: float = ABORT_TIMEOUT_S

    def step(self) -> dict[str, Any]:
        result = super().step()  # type: ignore[misc]
        controller = result.pop(CONTROLLER_KEY, None)
        if controller is not None:
            _run.note_controller(*controller)
        return result

    def cleanup(self) -> None:
        failure = None
        try:
            failure = _run.stop(self.abort_timeout_s)
            _run.wait_for_function(FUNCTION_END_TIMEOUT_S)
            _run.dismiss_guard()
        finally:
            try:
                super().cleanup()  # type: ignore[misc]  # raises what the function raised
            except Exception as err:
                if not _run.ended_by_its_abort(err):
                    log.error("trial %s: its run failed while stopping", _run.name, exc_info=err)
                    raise
        if failure is not None:
            raise failure


def run_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """The trial's body: its config from the drawn values, the shared clusters, then a whole
    training run reporting every epoch to Tune. Stopped by Tune, it raises the controller's
    death, which ``cleanup()`` expects."""
    quiet_ray_data()
    trial_id = tune.get_context().get_trial_id()
    cfg = with_shared_clusters(plan.trial_config(config, trial_id), plan.clusters_dir)
    train(cfg, callbacks=[ReportToTune()])


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
