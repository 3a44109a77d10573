"""Opening an attempt, outside TensorFlow: its record (rank 0; every rank learns its number), the controller's
state to continue from, rank 0's clock for time-based backups, the elastic runtime env, and the report of how
the attempt's workers started."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import ray

from orchestrator import lr_plan, resize_signal
from orchestrator.backup_interval import BackupInterval
from orchestrator.errors import OrchestratorError
from orchestrator.records import AttemptRecord, BackupManifest, ControlState, WorkerStart
from orchestrator.recovery import time_to_resume
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from orchestrator.worker.agreement import agreed
from orchestrator.worker.warm_pool import describe_warm_start


def start_attempt(
    store: JobStore,
    job: str,
    rank: int,
    log: logging.Logger,
    *,
    start_epoch: int,
    start_step: int,
    restored_from: str | None,
    startup: dict[str, float],
    workers: list[WorkerStart],
    replicas: int,
) -> int:
    """Rank 0 records this worker group's start; every worker learns the attempt number from it."""
    attempt = 0
    if rank == 0:
        record = store.start_attempt(
            job,
            start_epoch=start_epoch,
            start_step=start_step,
            restored_from=restored_from,
            startup=startup,
            workers=workers,
            replicas=replicas,
        )
        attempt = record.attempt
        log.info(
            "attempt %d starts at epoch %d, step %d%s; start-up took %s",
            attempt,
            start_epoch + 1,
            start_step,
            f", restored from backup {restored_from}" if restored_from else " (no backup to restore)",
            ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in startup.items()),
        )
    return agreed(attempt)


def control_state(
    spec: JobSpec, store: JobStore, job: str, rank: int, restored: BackupManifest | None, log: logging.Logger
) -> ControlState:
    """The controller's state to continue from: the backup's, on the current branch; agreed by all workers."""
    state: ControlState | None = None
    if rank == 0:
        if restored is None:
            state = lr_plan.initial_state(spec)
        elif restored.control is None:  # written before the controller existed: its LR is all there is
            state = ControlState(learning_rate=restored.learning_rate)
        else:
            state = restored.control
        branch = len(store.read_branches(job))
        if state.branch < branch:
            log.info(
                "continuing on branch %d (resumed from an earlier snapshot); segment %d starts",
                branch,
                state.segment + 1,
            )
            state = state.model_copy(update={"branch": branch, "segment": state.segment + 1})
    return agreed(state)  # type: ignore[return-value]


def backup_interval(spec: JobSpec, store: JobStore, job: str, rank: int, log: logging.Logger) -> BackupInterval | None:
    """Rank 0's clock for time-based backups inside epochs (``backup.every_seconds``), or None where off.

    With ``auto``, what the job has trained and the restarts it has seen are read in the background (the
    interval uses a prior until then), never on the restart path."""
    chosen = spec.backup.time_interval()
    if rank != 0 or chosen is None:
        return None
    now = time.monotonic()
    interval = BackupInterval(
        max_overhead=spec.backup.max_overhead,
        fixed_s=None if chosen == "auto" else float(chosen),
        started_at=now,
        last_backup_at=now,
    )
    if chosen == "auto":
        args = (interval, store, job, log)
        threading.Thread(target=_observe_job, args=args, name="backup-interval", daemon=True).start()
    return interval


def _observe_job(interval: BackupInterval, store: JobStore, job: str, log: logging.Logger) -> None:
    try:
        attempts = store.read_attempts(job)
        failures = store.read_failures(job)
        trained = sum(r.seconds for r in store.read_history_lines(job))
    except OrchestratorError as exc:  # the prior stands in
        log.warning("backup interval: could not read the job's history (%s); using the prior", exc.message)
        return
    interval.observe_job(trained, len(time_to_resume(failures, attempts)))  # restarts that followed a failure


def publish_runtime_env(spec: JobSpec, rank: int, run: str | None, log: logging.Logger) -> None:
    """Rank 0 of an elastic job: the workers' runtime env, so that the controller can start warm processes
    on a node that joins before the group grows onto it (``orchestrator.elastic``)."""
    if rank != 0 or run is None or not spec.scaling.elastic:
        return
    try:
        resize_signal.publish_runtime_env(run, ray.get_runtime_context().get_runtime_env_string())
    except Exception as exc:  # an optimisation: a grown group's new workers then start cold
        log.warning("elastic: could not publish the workers' runtime env (%s: %s)", type(exc).__name__, exc)


def report_warm_start(store: JobStore, job: str, attempt: int, log: logging.Logger) -> None:
    """Log how the attempt's workers started (warm or cold), and how long after the failure it restarts after."""
    attempts = store.read_attempts(job)
    record = next((a for a in attempts if a.attempt == attempt), None)
    if record is None:
        return
    failed = failed_before(record, attempts, store.read_failures(job))
    log.info("attempt %d: %s", attempt, describe_warm_start(record.workers, failed))


def failed_before(record: AttemptRecord, attempts: list[AttemptRecord], failures: list[Any]) -> Any:
    """When the failure this attempt restarts after happened, or None (the first attempt, a resume)."""
    earlier = [a.started_at for a in attempts if a.attempt < record.attempt]
    if not earlier:
        return None
    before = [f.failed_at for f in failures if earlier[-1] <= f.failed_at <= record.started_at]
    return before[-1] if before else None


def log_start(
    log: logging.Logger,
    rank: int,
    world_size: int,
    strategy: Any,
    model: Any,
    data: Any,
    steps: int,
    batch_size: int,
    validation_steps: int,
) -> None:
    """Where this rank runs and what it trains (and why validation is skipped, where it is)."""
    if len(data.x_val) and not validation_steps:
        log.warning(
            "validation skipped: %d validation examples is less than one global batch of %d",
            len(data.x_val),
            batch_size,
        )
    log.info(
        "rank %d/%d on %s (pid %d, Ray node %s): %d replicas, %d params, %d steps/epoch of %d examples, "
        "%d validation steps",
        rank,
        world_size,
        socket.gethostname(),
        os.getpid(),
        ray.get_runtime_context().get_node_id()[:12],
        strategy.num_replicas_in_sync,
        model.count_params(),
        steps,
        batch_size,
        validation_steps,
    )
