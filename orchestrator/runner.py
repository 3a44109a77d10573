"""``orchestrator run`` and ``resume``: drive a job on Ray in the foreground, reporting snapshots as it trains."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import model_fn as builders
from orchestrator import stopping
from orchestrator.errors import JobExistsError, OrchestratorError, StoreError, UsageError
from orchestrator.lifecycle import DriverLease, driver_gone, wait_until_gone
from orchestrator.records import JobState
from orchestrator.spec import CallableModel, JobSpec
from orchestrator.spec_loader import load_spec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.views import LiveSnapshot, RunOutput, in_sync

if TYPE_CHECKING:
    pass

POLL_SECONDS = 0.5
log = logging.getLogger("orchestrator.runner")  # the CLI prints its warnings


def run_job(
    spec_path: Path,
    *,
    store: JobStore,
    name: str | None = None,
    address: str | None = None,
    or_resume: bool = False,
    overrides: list[str] | None = None,
    on_update: Callable[[LiveSnapshot], None] = lambda snapshot: None,
) -> RunOutput:
    """Validate the spec, record the job, train it to the end, and return what it ended with.

    With ``or_resume``, a job of that name already in the store is continued instead (a RayJob retry after the
    head was lost runs the same command): a finished job is left as it is, any other is resumed from its latest
    backup, taking over from a driver that is gone.

    ``on_update`` receives a snapshot read from the store about twice a second (the same files that
    ``status`` and ``history`` read from another shell). Ctrl+C stops the job (STOPPED, resumable).

    Raises:
        SpecError, JobExistsError, ClusterError: before anything trains.
        OrchestratorError: the job ran and failed (the store says why); InterruptedByUserError on Ctrl+C.
    """
    spec_path = spec_path.resolve()  # now: the working directory may not outlive Ray's start-up in a Ray job
    spec = load_spec(spec_path, name=name, overrides=overrides)
    return run_spec(spec, store=store, spec_path=spec_path, address=address, or_resume=or_resume, on_update=on_update)


def run_spec(
    spec: JobSpec,
    *,
    store: JobStore,
    spec_path: Path | None = None,
    address: str | None = None,
    or_resume: bool = False,
    on_update: Callable[[LiveSnapshot], None] = lambda snapshot: None,
) -> RunOutput:
    """``run_job`` for a spec already validated (a sweep's variants, the Python API's specs).

    A spec whose model is a Python function (``model.callable``, from the Python API) must carry it
    (``CallableModel.builder``): it is pickled into the job's folder, where the workers load it.
    """
    builder = builders.builder_of(spec)
    if or_resume and spec.name in store.job_names():
        return _take_over(store, spec.name, address=address, on_update=on_update, model_fn=builder)
    check_new_name(store, spec.name)
    pickled = builders.pickle_builder(spec.model.callable, builder) if isinstance(spec.model, CallableModel) else None
    _attach_to_ray(address)
    if pickled is not None:
        spec = spec.model_copy(
            update={"model": spec.model.model_copy(update={"url": store.url_of(spec.name, builders.MODEL_FN)})}
        )
    store.create_job(spec, spec_path=str(spec_path.resolve()) if spec_path else None)
    if pickled is not None:
        builders.store_builder(store, spec.name, pickled, "run")
    with DriverLease(store, spec.name, "run --or-resume" if or_resume else "run"):
        return drive_job(store, spec.name, on_update=on_update)


def check_new_name(store: JobStore, name: str) -> None:
    """Raises JobExistsError if the store has a job of that name already."""
    if name in store.job_names():
        raise JobExistsError(
            f"a job named '{name}' already exists in store {store.url}",
            hint=f"give this run another name with --name, or see: orchestrator status {name}",
        )


def resume_job(
    name: str,
    *,
    store: JobStore,
    address: str | None = None,
    learning_rate: float | None = None,
    from_epoch: int | None = None,
    on_update: Callable[[LiveSnapshot], None] = lambda snapshot: None,
    model_fn: Callable[..., Any] | None = None,
) -> RunOutput:
    """Continue a STOPPED or FAILED job from its latest backup (or from the snapshot after ``from_epoch``
    epochs, starting a new branch), optionally with a new ``learning_rate``, on the Ray ``address`` points at.
    A job still recorded active whose driver is known gone (``lifecycle.driver_gone``) is taken over: recorded
    FAILED with that reason, then resumed.

    A job whose model is a Python function needs it again (``model_fn``): it is stored anew for the workers.
    ``learning_rate`` is checked as ``set-lr`` checks it, and applied through the same command.

    Raises:
        UsageError: the job is not stopped or failed (a live driver runs it, or it finished), or has no such
            snapshot; a bad learning rate; a Python-function model without ``model_fn`` (or ``model_fn`` for a
            job without one).
    """
    from orchestrator.commands import check_learning_rate

    if learning_rate is not None:
        check_learning_rate(learning_rate)
    model = store.load_job(name).spec.model
    pickled = builders.resume_builder(name, model, model_fn)
    state = store.read_state(name)
    gone = driver_gone(store.read_driver(name)) if state.status.is_active() else None  # then taken over
    if state.status not in (JobStatus.STOPPED, JobStatus.FAILED) and gone is None:
        advice = {
            JobStatus.SUCCEEDED: "it trained every epoch; start another with: orchestrator run SPEC --name NEW, "
            "or branch it from a snapshot with --from-epoch N",
        }.get(state.status, f"a driver owns it now; see: orchestrator status {name}")
        if not (from_epoch is not None and state.status is JobStatus.SUCCEEDED):
            raise UsageError(f"job '{name}' is {state.status}; only a STOPPED or FAILED job can be resumed ({advice})")
    from orchestrator.commands import find_snapshot

    snapshot = find_snapshot(store, name, from_epoch) if from_epoch is not None else None
    with DriverLease(store, name, "resume"):  # this process owns the job's status from here on
        if gone is not None:
            reason = f"its driver is gone (found {state.status} by resume: {gone}); taken over from the latest backup"
            state = store.set_status(name, JobStatus.FAILED, reason, ended_at=None)  # as it is from here on
            store.append_log(name, "driver.log", f"resume: {reason}\n")
        if pickled is not None:
            builders.store_builder(store, name, pickled, "resume")
        return _resume(
            store,
            name,
            state,
            address=address,
            learning_rate=learning_rate,
            from_epoch=from_epoch,
            snapshot=snapshot,
            on_update=on_update,
        )


def _resume(
    store: JobStore,
    name: str,
    state: JobState,
    *,
    address: str | None,
    learning_rate: float | None,
    from_epoch: int | None,
    snapshot: str | None,
    on_update: Callable[[LiveSnapshot], None],
) -> RunOutput:
    # The intent first: Ray and TensorFlow take seconds to start, and meanwhile `watch` and `status` must see a
    # job about to run (PENDING) on the branch it will train, not the STOPPED or FAILED it was.
    backups = store.backup_names(name)
    origin = (
        f"the snapshot after epoch {from_epoch}"
        if from_epoch is not None
        else (f"backup {backups[-1]}" if backups else "the first epoch (no backup)")
    )
    intent = f"resume requested from {state.status}: starting Ray, then the workers from {origin}"
    store.set_status(name, JobStatus.PENDING, intent, ended_at=None)
    stopping.void_pending_stops(store, name, state)
    if snapshot is not None and from_epoch is not None:
        _start_branch(store, name, snapshot, from_epoch)
    try:
        _attach_to_ray(address)
    except BaseException as exc:  # this process will not drive it: the job is as it was, but for a new branch
        _not_started(store, name, state, snapshot, from_epoch, exc)
        raise
    if learning_rate is not None:
        from orchestrator.commands import set_lr

        # The job is PENDING now: set-lr's checks pass for a job about to run, and its command applies at once.
        command = set_lr(store, name, learning_rate, now=True, at_epoch=None, issued_by="resume --lr").command
        store.append_log(name, "driver.log", f"resume with lr {learning_rate:g} (command #{command.seq})\n")
    backups = store.backup_names(name)
    store.append_log(
        name,
        "driver.log",
        f"resume requested from {state.status} ({state.reason or 'no reason recorded'}); latest backup: "
        f"{backups[-1] if backups else 'none, so from the first epoch'}\n",
    )
    return drive_job(store, name, on_update=on_update)


def _start_branch(store: JobStore, name: str, snapshot: str, from_epoch: int) -> None:
    """A resume from the snapshot after ``from_epoch`` epochs: a new branch, its backups replaced by the snapshot."""
    manifest = store.read_manifest(name, snapshot, folder="snapshots")
    branch = store.add_branch(name, from_epoch=from_epoch, snapshot=snapshot)
    replaced = store.restart_from_snapshot(name, manifest, branch.branch)
    store.append_log(
        name,
        "driver.log",
        f"resume from snapshot {snapshot} (after epoch {from_epoch}) as branch {branch.branch}; epochs after "
        f"{from_epoch} of earlier branches are kept in the history, marked superseded; backups replaced: "
        f"{', '.join(replaced) or 'none'}\n",
    )


def _not_started(
    store: JobStore, name: str, state: JobState, snapshot: str | None, from_epoch: int | None, exc: BaseException
) -> None:
    """A resume that could not attach to Ray: the job's status as it was, or STOPPED at a new branch's fork."""
    if snapshot is None:  # PENDING -> STOPPED or FAILED, as it was
        kept = {"attempt": state.attempt, "started_at": state.started_at, "ended_at": state.ended_at}
        store.set_status(name, state.status, state.reason, stopped_by=state.stopped_by, **kept)
    else:  # its live run now ends at the fork (even if it had SUCCEEDED): a later resume continues the branch
        why = exc.message if isinstance(exc, OrchestratorError) else type(exc).__name__
        store.set_status(
            name,
            JobStatus.STOPPED,
            reason=f"resume --from-epoch {from_epoch} did not start "
            f"({why}); `orchestrator resume {name}` continues the new branch",
        )


def _take_over(
    store: JobStore,
    name: str,
    *,
    address: str | None,
    on_update: Callable[[LiveSnapshot], None],
    model_fn: Callable[..., Any] | None,
) -> RunOutput:
    state = store.read_state(name)
    if state.status is JobStatus.SUCCEEDED:
        return result_of(store, name, 0.0)
    if state.status is JobStatus.STOPPED and state.stopped_by == "user":
        # A retry (a RayJob's, a re-submitted entrypoint) must never undo a person's stop.
        why = state.reason or "no reason recorded"
        store.append_log(name, "driver.log", f"run --or-resume: left STOPPED: a person stopped it ({why})\n")
        return result_of(store, name, 0.0).model_copy(
            update={
                "note": f"left STOPPED: a person stopped it ({why}); a retry does not "
                f"continue it, `orchestrator resume {name}` does",
            }
        )
    if state.status in (JobStatus.STOPPED, JobStatus.FAILED):
        return resume_job(name, store=store, address=address, on_update=on_update, model_fn=model_fn)
    # An active status: its driver must be gone before this process takes the job (lifecycle.driver_gone); a
    # retry after a lost head waits here until the lost driver's heartbeat is stale.
    how = wait_until_gone(store, name) or "no driver recorded its heartbeat"
    with DriverLease(store, name, "run --or-resume"):
        reason = (
            f"its driver is gone (found {state.status} by run --or-resume: {how}); taken over from the latest backup"
        )
        store.set_status(name, JobStatus.FAILED, reason, ended_at=None)
        store.append_log(name, "driver.log", f"run --or-resume: {reason}\n")
        return resume_job(name, store=store, address=address, on_update=on_update, model_fn=model_fn)


def attach_to_ray(address: str | None) -> None:
    """Check the address, import TensorFlow and connect to Ray (or start an embedded one), as a run does first."""
    _attach_to_ray(address)


def _attach_to_ray(address: str | None) -> None:
    from orchestrator.launcher import check_ray_address, connect_ray, tensorflow_trainer_class

    check_ray_address(address)  # in seconds, before TensorFlow's import and Ray's minutes of retries
    tensorflow_trainer_class()  # imports TensorFlow now, before any live display
    connect_ray(address)


def drive_job(store: JobStore, name: str, *, on_update: Callable[[LiveSnapshot], None]) -> RunOutput:
    """Drive a recorded job to its end in a background thread, reporting snapshots from this one."""
    from orchestrator.driver import JobDriver  # imports Ray Train and TensorFlow: only when running

    spec = store.load_job(name).spec
    driver = JobDriver(store, name)
    started = time.monotonic()
    outcome: dict[str, JobState | BaseException] = {}

    # Whether the driver thread ended is this event, never Thread.is_alive()/join(): on Python 3.11 a Ctrl+C
    # that lands in join() marks the thread stopped while it still runs (threading._wait_for_tstate_lock
    # releases the live thread's lock), and the stop would never wait for the workers' backup.
    ended = threading.Event()

    def drive() -> None:
        try:
            outcome["state"] = driver.run()
        except BaseException as exc:  # handed to the main thread, which re-raises it
            outcome["error"] = exc
        finally:
            ended.set()

    thread = threading.Thread(target=drive, name=f"driver-{name}", daemon=True)
    thread.start()
    try:
        while not ended.is_set():
            _report(store, name, spec, on_update)
            ended.wait(POLL_SECONDS)
    except BaseException as exc:
        if isinstance(exc, SystemExit):  # SIGTERM (Ray's handler exits): `orchestrator cancel`, ray job stop, k8s
            reason = f"the command driving the job was terminated (exit {exc.code})"
            asked = stopping.pending_stop(
                store, name
            )  # `cancel` asks through a stop command before it stops the Ray job
            if asked is not None:
                reason += f" after stop #{asked.seq} by {asked.issued_by or 'a person'}"
            # The first outcome recorded stands. A person's stop is never undone by a retry (run --or-resume); a
            # bare signal (ray job stop, a node going) is not a person's: a retry continues it.
            driver.stop(reason, stopped_by="user" if asked is not None else "signal")
            raise
        if not isinstance(exc, KeyboardInterrupt):
            # The monitor itself failed: the training thread dies with this process, so say so in the store.
            driver.fail(f"the command driving the job stopped: {type(exc).__name__}: {exc}")
            raise
        stopping.interrupted(store, name, spec, driver, ended, lambda: _report(store, name, spec, on_update))
    _report(store, name, spec, on_update)
    error = outcome.get("error")
    if isinstance(error, BaseException):
        raise error
    return result_of(store, name, time.monotonic() - started)


def _report(store: JobStore, name: str, spec: JobSpec, on_update: Callable[[LiveSnapshot], None]) -> None:
    if (snapshot := _snapshot(store, name, spec)) is not None:
        on_update(snapshot)


def _snapshot(store: JobStore, name: str, spec: JobSpec) -> LiveSnapshot | None:
    """What the store says now; ``None`` when it cannot be read this time (the display skips a frame)."""
    try:
        return read_snapshot(store, name, spec)
    except StoreError:
        return None


def read_snapshot(store: JobStore, name: str, spec: JobSpec) -> LiveSnapshot:
    """The job as a live view shows it: the live run's epochs, and the position of the attempt now training.

    ``progress.json`` is the last attempt's until a new one reports: while a resumed job starts (PENDING) or
    before the new attempt's first report, it is not shown (it would name the old position and LR as current).
    """
    state = store.read_state(name)
    progress = store.read_progress(name)
    if progress is not None and (
        state.status is JobStatus.PENDING or (state.started_at is not None and progress.updated_at < state.started_at)
    ):
        progress = None
    return LiveSnapshot(
        name=name,
        state=state,
        progress=progress,
        history=store.read_history(name),
        batch_size=spec.batch_size,
        epochs=spec.epochs,
    )


def result_of(store: JobStore, name: str, wall_seconds: float) -> RunOutput:
    """What a job ended with (or stands at), as ``run`` and ``resume`` report it."""
    record = store.load_job(name)
    state = store.read_state(name)
    history = store.read_history(name)
    summaries = store.read_worker_summaries(name)
    model = store.path(name, "model", "final.keras")
    return RunOutput(
        name=name,
        store=store.url,
        status=state.status,
        attempt=state.attempt,
        epochs_done=len({r.epoch for r in history}),
        epochs=record.spec.epochs,
        final_metrics=history[-1].metrics if history else {},
        wall_seconds=round(wall_seconds, 2),
        workers_in_sync=in_sync(summaries) and len(summaries) == record.spec.scaling.workers,
        model_url=store.url_of(name, "model", "final.keras") if store.fs.exists(model) else None,
        reason=state.reason,
    )
