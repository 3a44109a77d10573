"""Whether a running job is recovering: computed from what the store says, set by the driver.

Ray Train restarts a failed worker group inside ``fit()``; the driver learns of it from two files with one
writer each: ``failures.jsonl`` (Ray Train's controller, at every failure) and ``attempts.jsonl`` (rank 0 of
each new worker group, once it has restored its backup). A job is recovering from the moment of a failure
until the next attempt starts; time to resume is the gap between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestrator.records import AttemptRecord, FailureRecord
from orchestrator.status import JobStatus


@dataclass(frozen=True)
class Transition:
    """A status change the driver should record, and the line it logs about it."""

    status: JobStatus
    reason: str | None
    log: str


def recovery_transition(
    status: JobStatus, failures: list[FailureRecord], attempts: list[AttemptRecord], *, since: datetime
) -> Transition | None:
    """The change to make now, if any; only failures after ``since`` (this driver's start) count.

    Example::

        recovery_transition(JobStatus.RUNNING, [failure_at_10s], [attempt_at_0s], since=start)
        # -> Transition(RECOVERING, "worker group failed: ...; restarting from the latest backup", ...)
    """
    recent = [f for f in failures if f.failed_at >= since]
    latest_failure = recent[-1] if recent else None
    latest_attempt = attempts[-1] if attempts else None
    recovering = latest_failure is not None and (
        latest_attempt is None or latest_attempt.started_at < latest_failure.failed_at
    )
    if status is JobStatus.RUNNING and recovering and latest_failure is not None:
        reason = latest_failure.reasons[0] if latest_failure.reasons else "no detail"
        return Transition(
            JobStatus.RECOVERING,
            f"worker group failed ({reason}); restarting from the latest backup",
            f"worker group failed ({reason}); Ray Train restarts it",
        )
    if status is JobStatus.RECOVERING and not recovering and latest_attempt is not None:
        waited = (latest_attempt.started_at - latest_failure.failed_at).total_seconds() if latest_failure else 0.0
        source = f"backup {latest_attempt.restored_from}" if latest_attempt.restored_from else "the first epoch"
        return Transition(
            JobStatus.RUNNING,
            None,
            f"attempt {latest_attempt.attempt} resumed from {source} (epoch {latest_attempt.start_epoch + 1}), "
            f"{waited:.1f} s after the failure",
        )
    return None


def time_to_resume(failures: list[FailureRecord], attempts: list[AttemptRecord]) -> dict[int, float]:
    """Seconds from the failure before each restarted attempt to that attempt's start, by attempt number."""
    gaps: dict[int, float] = {}
    for attempt in attempts[1:]:
        before = [f for f in failures if f.failed_at <= attempt.started_at]
        if before:
            gaps[attempt.attempt] = round((attempt.started_at - before[-1].failed_at).total_seconds(), 2)
    return gaps
