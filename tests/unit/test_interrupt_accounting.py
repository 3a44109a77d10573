"""What Ctrl+C and an end without a backup leave behind: the steps they lose are counted, and a stop still
pending when the job ended otherwise does not stop the resumed job (the Ray side: tests/integration)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchestrator.commands import command_rows, request_stop
from orchestrator.lr_plan import due_commands
from orchestrator.records import (
    AttemptRecord,
    BackupRecord,
    BranchRecord,
    ControlState,
    EpochRecord,
    Position,
    Progress,
)
from orchestrator.recovery import run_accounting
from orchestrator.spec_loader import load_spec
from orchestrator.status import JobStatus
from orchestrator.stopping import void_pending_stops, what_was_kept
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw, write_spec

START = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def line(epoch: int, attempt: int, end: float) -> EpochRecord:
    return EpochRecord(epoch=epoch, attempt=attempt, learning_rate=0.1, metrics={}, seconds=5, ended_at=at(end))


def backup(epoch: int, step: int, attempt: int, stored: float) -> BackupRecord:
    return BackupRecord(
        name=f"e{epoch:05d}-s{step:07d}",
        epoch=epoch,
        step=step,
        attempt=attempt,
        reason="epoch end",
        blocking_seconds=0.1,
        upload_seconds=0.2,
        size_bytes=1,
        at=at(stored),
    )


def progress(epoch: int, step: int, attempt: int, updated: float) -> Progress:
    return Progress(
        attempt=attempt, epoch=epoch, epochs=6, step=step, steps_per_epoch=32, learning_rate=0.1, updated_at=at(updated)
    )


def test_a_resume_after_an_end_without_a_backup_counts_the_steps_it_trains_again() -> None:
    # attempt 1 reached step 20 of epoch 2 (its last report) and was stopped at once; the newest backup was at
    # the end of epoch 1, so attempt 2 (the resume, no failure between) trains 20 steps again.
    reached = Position(epoch=2, step=20, steps_per_epoch=32, attempt=1)
    attempts = [
        AttemptRecord(attempt=1, started_at=at(0), start_epoch=0),
        AttemptRecord(
            attempt=2, started_at=at(100), start_epoch=2, restored_from="e00002-s0000000", previous_reached=reached
        ),
    ]
    lines = [line(0, 1, 5), line(1, 1, 10), line(2, 2, 105)]
    accounting = run_accounting(attempts, [], lines, lines, at(110))
    assert accounting.lost_steps == 20 and accounting.preemptions == 0
    assert accounting.time_to_resume == {}  # the time it sat STOPPED is not a recovery
    # Going back to a snapshot on purpose (resume --from-epoch) is a person's choice, not a loss.
    branch = BranchRecord(branch=1, from_epoch=1, snapshot="e00001-s0000000", created_at=at(90))
    assert run_accounting(attempts, [], lines, lines, at(110), branches=[branch]).lost_steps == 0
    # Records written before previous_reached existed: nothing known, nothing counted.
    attempts[1] = attempts[1].model_copy(update={"previous_reached": None})
    assert run_accounting(attempts, [], lines, lines, at(110)).lost_steps == 0


def test_a_job_that_ended_past_its_newest_backup_counts_those_steps_before_it_is_resumed() -> None:
    attempts = [AttemptRecord(attempt=1, started_at=at(0), start_epoch=0)]
    lines = [line(0, 1, 5), line(1, 1, 10)]
    backups = [backup(1, 0, 1, 6), backup(2, 0, 1, 11)]
    ended = progress(2, 7, attempt=1, updated=12)  # 7 steps into epoch 2 (0-based), past the backup after epoch 2
    accounting = run_accounting(attempts, [], lines, lines, at(12), backups, ended_without_backup=ended)
    assert accounting.lost_steps == 7
    assert run_accounting(attempts, [], lines, lines, at(12), [], ended_without_backup=ended).lost_steps == 2 * 32 + 7
    stopped_with_a_backup = progress(2, 0, attempt=1, updated=12)
    assert (
        run_accounting(
            attempts, [], lines, lines, at(12), backups, ended_without_backup=stopped_with_a_backup
        ).lost_steps
        == 0
    )
    # The position of a branch that a later resume --from-epoch superseded is no loss of the live run.
    branch = BranchRecord(branch=1, from_epoch=1, snapshot="e00001-s0000000", created_at=at(20))
    assert (
        run_accounting(
            attempts, [], lines, lines, at(12), backups, branches=[branch], ended_without_backup=ended
        ).lost_steps
        == 0
    )


def make_job(tmp_path: Path) -> JobStore:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(load_spec(write_spec(tmp_path, quickstart_raw())))
    return store


def test_a_new_attempt_records_where_the_previous_one_last_reported(tmp_path: Path) -> None:
    store = make_job(tmp_path)
    first = store.start_attempt("quickstart", start_epoch=0, restored_from=None)
    assert first.previous_reached is None  # the first attempt follows nothing
    store.write_progress("quickstart", progress(3, 11, attempt=1, updated=0))
    second = store.start_attempt("quickstart", start_epoch=3, restored_from="e00003-s0000000")
    assert second.previous_reached == Position(epoch=3, step=11, steps_per_epoch=32, attempt=1)
    assert store.read_attempts("quickstart")[-1].previous_reached == second.previous_reached  # reads back
    # A position of some other attempt than the one just before (a stale file) is not taken for it.
    third = store.start_attempt("quickstart", start_epoch=3, restored_from="e00003-s0000000")
    assert third.previous_reached is None


def test_a_damaged_progress_file_does_not_keep_an_attempt_from_starting(tmp_path: Path) -> None:
    store = make_job(tmp_path)
    store.start_attempt("quickstart", start_epoch=0, restored_from=None)
    Path(store.path("quickstart", "progress.json")).write_text("{not json")
    assert store.start_attempt("quickstart", start_epoch=0, restored_from=None).previous_reached is None


def test_a_stop_pending_when_the_job_ended_otherwise_is_void_at_the_resume_and_says_why(tmp_path: Path) -> None:
    store = make_job(tmp_path)
    store.set_status("quickstart", JobStatus.RUNNING, started_at=at(0))
    store.start_attempt("quickstart", start_epoch=0, restored_from=None)
    store.write_progress("quickstart", progress(1, 5, attempt=1, updated=1))
    stop = request_stop(store, "quickstart", at_epoch_end=False, issued_by="Ctrl+C").command
    assert stop.issued_by.endswith("(Ctrl+C)")
    set_lr = store.add_command("quickstart", stop.model_copy(update={"kind": "set_lr", "learning_rate": 0.01}))
    store.set_status("quickstart", JobStatus.STOPPING)
    ended = store.set_status("quickstart", JobStatus.STOPPED, reason="interrupted by the user (Ctrl+C)")
    void_pending_stops(store, "quickstart", ended)
    acks = store.read_acks("quickstart")
    assert set(acks) == {stop.seq}  # the set-lr a person typed still applies after the resume
    assert acks[stop.seq].void == "the job had ended STOPPED before it took effect; resumed since"
    rows = {row.command.seq: row.describe() for row in command_rows(store, "quickstart")}
    assert (
        rows[stop.seq] == f"#{stop.seq} stop: not applied (the job had ended STOPPED before it took effect; "
        "resumed since)"
    )
    assert "pending" in rows[set_lr.seq]
    state = ControlState(learning_rate=0.1)
    for boundary in ("epoch_begin", "step", "epoch_end"):
        due = due_commands(store.read_commands("quickstart"), acks, [], state, point=(1, 5), boundary=boundary)
        assert stop.seq not in [d.command.seq for d in due]
    assert f"stop #{stop.seq} not applied" in store.read_logs("quickstart")["driver.log"]


def test_the_interrupt_message_says_where_a_resume_continues_and_what_it_trains_again(tmp_path: Path) -> None:
    store = make_job(tmp_path)
    assert what_was_kept(store, "quickstart") == "it has no backup yet: a resume starts at the first epoch"
    store.append_backup_record("quickstart", backup(2, 0, 1, 10))
    store.write_progress("quickstart", progress(2, 9, attempt=1, updated=11))
    assert what_was_kept(store, "quickstart") == (
        "its latest backup is e00002-s0000000 (after epoch 2); the 9 step(s) trained since it are lost"
    )
    store.append_backup_record("quickstart", backup(2, 9, 1, 12))
    assert what_was_kept(store, "quickstart") == (
        "its latest backup is e00002-s0000009 (epoch 3, step 9); nothing trained was lost"
    )
