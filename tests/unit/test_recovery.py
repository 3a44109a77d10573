"""RUNNING <-> RECOVERING from the failures Ray Train's controller records and the attempts rank 0 records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.records import AttemptRecord, FailureRecord
from orchestrator.recovery import recovery_transition, time_to_resume
from orchestrator.status import JobStatus

START = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def attempt(number: int, seconds: float, restored_from: str | None = None, epoch: int = 0) -> AttemptRecord:
    return AttemptRecord(attempt=number, started_at=at(seconds), start_epoch=epoch, restored_from=restored_from)


def failure(seconds: float, reason: str = "rank 1: ActorDiedError: killed") -> FailureRecord:
    return FailureRecord(failed_at=at(seconds), reasons=[reason])


def test_a_failure_after_the_latest_attempt_means_recovering() -> None:
    change = recovery_transition(JobStatus.RUNNING, [failure(30)], [attempt(1, 5)], since=START)
    assert change is not None and change.status is JobStatus.RECOVERING
    assert change.reason == "worker group failed (rank 1: ActorDiedError: killed); restarting from the latest backup"


def test_the_next_attempt_ends_recovery_and_says_how_long_it_took() -> None:
    attempts = [attempt(1, 5), attempt(2, 44.5, "e00003-s0000000", epoch=3)]
    change = recovery_transition(JobStatus.RECOVERING, [failure(30)], attempts, since=START)
    assert change is not None and (change.status, change.reason) == (JobStatus.RUNNING, None)
    assert change.log == "attempt 2 resumed from backup e00003-s0000000 (epoch 4), 14.5 s after the failure"


def test_nothing_changes_while_running_normally_or_still_recovering() -> None:
    assert recovery_transition(JobStatus.RUNNING, [], [attempt(1, 5)], since=START) is None
    assert recovery_transition(JobStatus.RECOVERING, [failure(30)], [attempt(1, 5)], since=START) is None
    assert recovery_transition(JobStatus.RUNNING, [failure(30)], [attempt(1, 5), attempt(2, 40)], since=START) is None


def test_failures_from_before_this_driver_started_do_not_count() -> None:
    # a job resumed after it failed: its old failure is history, not a recovery in progress
    assert recovery_transition(JobStatus.RUNNING, [failure(30)], [attempt(1, 5)], since=at(60)) is None


def test_a_failure_before_any_attempt_started_is_recovering_too() -> None:
    change = recovery_transition(JobStatus.RUNNING, [failure(3)], [], since=START)
    assert change is not None and change.status is JobStatus.RECOVERING


def test_time_to_resume_pairs_each_restart_with_the_failure_before_it() -> None:
    attempts = [attempt(1, 0), attempt(2, 40), attempt(3, 100)]
    assert time_to_resume([failure(30), failure(90)], attempts) == {2: 10.0, 3: 10.0}
    assert time_to_resume([], attempts[:1]) == {}
