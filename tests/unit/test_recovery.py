"""RUNNING <-> RECOVERING from the failures Ray Train's controller records and the attempts rank 0 records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from orchestrator.records import AttemptRecord, BackupManifest, EpochRecord, FailureRecord
from orchestrator.recovery import failure_kind, recovery_transition, time_to_resume
from orchestrator.status import JobStatus

START = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def attempt(number: int, seconds: float, restored_from: str | None = None, epoch: int = 0) -> AttemptRecord:
    return AttemptRecord(attempt=number, started_at=at(seconds), start_epoch=epoch, restored_from=restored_from)


def failure(seconds: float, reason: str = "rank 1: ActorDiedError: killed") -> FailureRecord:
    return FailureRecord(failed_at=at(seconds), reasons=[reason])


def line(epoch: int, attempt: int, end: float, seconds: float) -> EpochRecord:
    """A history line: ``epoch`` trained by ``attempt`` for ``seconds``, ending ``end`` s after START."""
    return EpochRecord(epoch=epoch, attempt=attempt, learning_rate=0.1, metrics={}, seconds=seconds, ended_at=at(end))


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
    # an attempt that follows no failure (an elastic job's growth, a resume) is not paired with an older one
    grown = [attempt(1, 0), attempt(2, 40), attempt(3, 100)]
    assert time_to_resume([failure(30)], grown) == {2: 10.0}


def test_run_accounting_counts_wall_useful_time_and_lost_steps() -> None:
    from orchestrator.recovery import run_accounting

    attempts = [
        AttemptRecord(attempt=1, started_at=at(0), start_epoch=0),
        AttemptRecord(attempt=2, started_at=at(30), start_epoch=1, start_step=10, restored_from="e00001-s0000010"),
    ]
    # attempt 1: epoch 0 in 10 s, then killed at 20 s in epoch 1 at step 25 of 32; restarted 10 s later
    failures = [FailureRecord(failed_at=at(20), reasons=["rank 1: killed"], epoch=1, step=25, steps_per_epoch=32)]
    lines = [line(0, 1, 10, 10), line(1, 2, 36, 6), line(2, 2, 46, 10)]
    accounting = run_accounting(attempts, failures, lines, lines, ended_at=at(50))
    assert accounting.wall_seconds == 20 + 20 + 10  # attempt 1, attempt 2 to the end, and the 10 s to resume
    assert accounting.training_seconds == 26
    assert accounting.goodput == round(26 / 50, 4)
    assert accounting.lost_steps == 15  # steps 10..24 of epoch 1 were trained twice
    assert accounting.restarts == 1 and accounting.preemptions == 0
    assert accounting.time_to_resume == {2: 10.0}


def test_a_split_epoch_counts_the_part_before_its_restore_point_given_the_backup_records() -> None:
    from orchestrator.records import BackupRecord
    from orchestrator.recovery import run_accounting, split_epoch_seconds

    def backup(name: str, epoch: int, step: int, attempt: int, stored: float) -> BackupRecord:
        return BackupRecord(
            name=name,
            epoch=epoch,
            step=step,
            attempt=attempt,
            reason="just-in-time: SIGTERM",
            blocking_seconds=0.5,
            upload_seconds=1.5,
            size_bytes=1,
            at=at(stored),
        )

    # attempt 1: epoch 0 ends at 10 s; a notice, and the backup at step 20 of epoch 1 is taken at 16 s (stored
    # at 18 s after its 0.5 s write and 1.5 s upload); attempt 2 resumes there at 30 s and ends epoch 1 at 35 s
    # (its record: 5 s); then attempt 2 is stopped the same way at step 8 of epoch 2 (taken at 40 s), and
    # attempt 3 resumes from it at 50 s. Attempt 3 also restored the same backup again after a quick failure.
    attempts = [
        AttemptRecord(attempt=1, started_at=at(0), start_epoch=0),
        AttemptRecord(attempt=2, started_at=at(30), start_epoch=1, start_step=20, restored_from="e00001-s0000020"),
        AttemptRecord(attempt=3, started_at=at(50), start_epoch=2, start_step=8, restored_from="e00002-s0000008"),
        AttemptRecord(attempt=4, started_at=at(60), start_epoch=2, start_step=8, restored_from="e00002-s0000008"),
    ]
    lines = [line(0, 1, 10, 10), line(1, 2, 35, 5), line(2, 4, 70, 6)]
    backups = [backup("e00001-s0000020", 1, 20, 1, 18), backup("e00002-s0000008", 2, 8, 2, 42)]
    assert split_epoch_seconds(attempts, lines, backups) == (16 - 10) + (40 - 35)
    failures = [FailureRecord(failed_at=at(t), reasons=["notice"], kind="notice") for t in (20, 45, 55)]
    without = run_accounting(attempts, failures, lines, lines, ended_at=at(70))
    with_backups = run_accounting(attempts, failures, lines, lines, ended_at=at(70), backups=backups)
    assert without.training_seconds == 21 and with_backups.training_seconds == 21 + 11
    assert split_epoch_seconds(attempts, lines, []) == 0  # no records (an older store): as before


def test_status_shows_what_the_backups_cost_against_the_training_time() -> None:
    from rich.console import Console

    from orchestrator.records import BackupRecord, JobState
    from orchestrator.recovery import Accounting
    from orchestrator.views import StatusOutput

    cost = {"reason": "scheduled", "blocking_seconds": 0.05, "upload_seconds": 0.2, "size_bytes": 1_500_000}
    records = [BackupRecord(name=f"e0000{i}-s0000000", epoch=i, step=0, attempt=1, **cost) for i in (1, 2, 3, 4)]
    accounting = Accounting(
        wall_seconds=30, training_seconds=20, goodput=0.66, restarts=0, preemptions=0, lost_steps=0, time_to_resume={}
    )
    output = StatusOutput(
        name="j",
        id="x",
        store="/s",
        summary="s",
        state=JobState(status=JobStatus.RUNNING),
        progress=None,
        epochs_done=4,
        epochs=5,
        attempts=[attempt(1, 0)],
        failures=[],
        backups=[],
        accounting=accounting,
        checkpoints=records,
    )
    console = Console(width=200, record=True)
    console.print(output.render())
    text = console.export_text()
    assert "4 backups; training blocked 0.20 s (1.0% of training), uploads 0.80 s in the background" in text
    assert "last 1.50 MB" in text


# ------------------------------------------------------------------------------------------- failure kinds
def manifest(attempt: int, reason: str = "scheduled", notices: list[str] | None = None) -> BackupManifest:
    fields = {"name": "e00001-s0000004", "epoch": 1, "step": 4, "attempt": attempt, "learning_rate": 0.1}
    return BackupManifest.model_validate({**fields, "files": {}, "reason": reason, "notices": notices or []})


def test_an_attempt_its_workers_ended_after_a_notice_is_a_notice() -> None:
    assert failure_kind(["failure", "notice"], 2, []) == "notice"
    assert failure_kind(["failure"], 2, []) == "failure"
    assert failure_kind([], None, [manifest(2, notices=["drain"])]) == "failure"  # no attempt recorded yet


def test_a_backup_the_failed_attempt_took_for_a_drain_makes_it_a_preemption() -> None:
    newest_first = [manifest(3), manifest(3, notices=["drain"]), manifest(2)]
    assert failure_kind(["failure"], 3, newest_first) == "preemption"
    assert failure_kind(["failure"], 3, [manifest(3, notices=["sigterm"])]) == "failure"
    assert failure_kind(["failure"], 4, newest_first) == "failure"  # an earlier attempt's drain


def test_the_kind_comes_from_typed_fields_never_from_the_reasons_text() -> None:
    drained_text = "just-in-time: a node of the group is being drained (PreemptionInfo(...))"
    assert failure_kind(["failure"], 3, [manifest(3, reason=drained_text)]) == "failure"
    assert failure_kind(["failure"], 3, [manifest(3, reason="scheduled", notices=["drain"])]) == "preemption"


def test_failure_records_and_manifests_of_older_versions_read_back_and_an_unknown_kind_is_refused() -> None:
    old = FailureRecord.model_validate_json('{"failed_at": "2026-01-01T00:00:00Z", "reasons": ["rank 0: x"]}')
    assert old.kind == "failure"
    assert manifest(1).notices == []  # a manifest written before the field
    with pytest.raises(ValidationError):
        FailureRecord.model_validate({"reasons": [], "kind": "PreemptionNoticeError"})
    with pytest.raises(ValidationError):
        manifest(1, notices=["being drained"])
