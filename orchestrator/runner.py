"""``orchestrator run``: record a job, drive it on Ray in the foreground, report snapshots while it trains."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import InterruptedByUserError, JobExistsError, StoreError
from orchestrator.records import JobState
from orchestrator.spec_loader import load_spec
from orchestrator.store import JobStore
from orchestrator.views import LiveSnapshot, RunOutput, in_sync

POLL_SECONDS = 0.5


def run_job(
    spec_path: Path,
    *,
    store: JobStore,
    name: str | None = None,
    address: str | None = None,
    on_update: Callable[[LiveSnapshot], None] = lambda snapshot: None,
) -> RunOutput:
    """Validate the spec, record the job, train it to the end, and return what it ended with.

    ``on_update`` receives a snapshot read from the store about twice a second (the same files that
    ``status`` and ``history`` read from another shell). Ctrl+C marks the job FAILED with that reason.

    Raises:
        SpecError, JobExistsError, ClusterError: before anything trains.
        TrainingFailedError: the job ran and failed (the store says why).
    """
    spec = load_spec(spec_path, name=name)
    if spec.name in store.job_names():
        raise JobExistsError(
            f"a job named '{spec.name}' already exists in store {store.url}",
            hint=f"give this run another name with --name, or see: orchestrator status {spec.name}",
        )
    from orchestrator.driver import JobDriver  # imports Ray Train and TensorFlow: only when running
    from orchestrator.launcher import connect_ray, tensorflow_trainer_class

    tensorflow_trainer_class()
    connect_ray(address)
    store.create_job(spec, spec_path=str(spec_path.resolve()))
    driver = JobDriver(store, spec.name)
    started = time.monotonic()
    outcome: dict[str, JobState | BaseException] = {}

    def drive() -> None:
        try:
            outcome["state"] = driver.run()
        except BaseException as exc:  # handed to the main thread, which re-raises it
            outcome["error"] = exc

    thread = threading.Thread(target=drive, name=f"driver-{spec.name}", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            snapshot = _snapshot(store, spec.name, spec.batch_size)
            if snapshot is not None:
                on_update(snapshot)
            thread.join(POLL_SECONDS)
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):
            # The monitor itself failed: the training thread dies with this process, so say so in the store.
            driver.fail(f"the command driving the job stopped: {type(exc).__name__}: {exc}")
            raise

        driver.fail("interrupted by the user (Ctrl+C)")
        done = len({record.epoch for record in store.read_history(spec.name)})
        raise InterruptedByUserError(
            f"interrupted: job '{spec.name}' stopped after {done}/{spec.epochs} epochs and is marked FAILED "
            "(its history is kept)",
            hint=f"see: orchestrator history {spec.name}; train again with: orchestrator run {spec_path} "
            f"--name {spec.name}-2",
        ) from None
    final = _snapshot(store, spec.name, spec.batch_size)
    if final is not None:
        on_update(final)
    error = outcome.get("error")
    if isinstance(error, BaseException):
        raise error
    return _result(store, spec.name, time.monotonic() - started)


def _snapshot(store: JobStore, name: str, batch_size: int) -> LiveSnapshot | None:
    """What the store says now; ``None`` when it cannot be read this time (the display skips a frame)."""
    try:
        return _read_snapshot(store, name, batch_size)
    except StoreError:
        return None


def _read_snapshot(store: JobStore, name: str, batch_size: int) -> LiveSnapshot:
    return LiveSnapshot(
        name=name,
        state=store.read_state(name),
        progress=store.read_progress(name),
        history=store.read_history(name),
        batch_size=batch_size,
    )


def _result(store: JobStore, name: str, wall_seconds: float) -> RunOutput:
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
    )
