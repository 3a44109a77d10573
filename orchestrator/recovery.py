"""Whether a running job is recovering: computed from what the store says, set by the driver.

Ray Train restarts a failed worker group inside ``fit()``; the driver learns of it from two files:
``failures.jsonl`` (Ray Train's controller, at every failure; rank 0 too, when it pauses for a drain's deadline)
and ``attempts.jsonl`` (rank 0 of each new worker group, once it has restored its backup). A job is recovering
from the moment of a failure until the next attempt starts; time to resume is the gap between the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from orchestrator.errors import FailureKind
from orchestrator.records import (
    AttemptRecord,
    BackupManifest,
    BackupRecord,
    BranchRecord,
    EpochRecord,
    FailureRecord,
    Position,
    Progress,
    utc_now,
)
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


def failure_kind(errors: Iterable[FailureKind], attempt: int | None, backups: Iterable[BackupManifest]) -> FailureKind:
    """What kind of failure ended ``attempt`` (``FailureRecord.kind``), from typed facts only, never a reason's text.

    ``errors``: the ``failure_kind`` of each failed worker's error (an error that ends an attempt on purpose after
    a just-in-time backup says ``notice``); ``backups``: the job's backups, newest first (read lazily: the first
    of an earlier attempt ends the search). A backup the attempt took for a drain notice
    (``BackupManifest.notices``) means the drained node was reclaimed: a preemption.
    """
    kinds = set(errors)
    if "notice" in kinds:
        return "notice"
    if attempt is None:
        return "failure"
    for backup in backups:
        if backup.attempt != attempt:
            break  # older backups are older attempts'
        if "drain" in backup.notices:
            return "preemption"
    return "failure"


def time_to_resume(failures: list[FailureRecord], attempts: list[AttemptRecord]) -> dict[int, float]:
    """Seconds from the failure before each restarted attempt to that attempt's start, by attempt number.

    Only a failure after the previous attempt started counts: an attempt that follows none (a resume, an elastic
    job's growth) is left out, not paired with an older failure another attempt already answered."""
    gaps: dict[int, float] = {}
    for index, attempt in enumerate(attempts[1:], start=1):
        previous = attempts[index - 1].started_at
        before = [f for f in failures if previous <= f.failed_at <= attempt.started_at]
        if before:
            gaps[attempt.attempt] = round((attempt.started_at - before[-1].failed_at).total_seconds(), 2)
    return gaps


@dataclass(frozen=True)
class WarmStart:
    """How many of a restarted worker group's workers landed in warm processes (``warm_starts``)."""

    attempt: int
    warm: int
    workers: int
    cold_ranks: tuple[int, ...]


def warm_starts(failures: list[FailureRecord], attempts: list[AttemptRecord]) -> list[WarmStart]:
    """For every attempt that restarted a failed worker group: its workers that started warm.

    A worker started warm when its process had imported TensorFlow and the worker's modules (the warm pool's
    preload) before the failure that the restart answers: that process was waiting in the pool, not started for
    this attempt. A process still importing when the failure came, or started after it, is cold. Attempts that
    follow no failure (the first, a resume) and attempts recorded without their workers are left out.
    """
    result: list[WarmStart] = []
    for index, attempt in enumerate(attempts[1:], start=1):
        previous = attempts[index - 1].started_at
        before = [f for f in failures if previous <= f.failed_at <= attempt.started_at]
        if not before or not attempt.workers:
            continue
        failed_at = before[-1].failed_at
        cold = tuple(w.rank for w in attempt.workers if w.preloaded_at is None or w.preloaded_at > failed_at)
        result.append(WarmStart(attempt.attempt, len(attempt.workers) - len(cold), len(attempt.workers), cold))
    return result


@dataclass(frozen=True)
class Accounting:
    """Where a run's time went (``orchestrator status``; docs/watching.md, "The accounting")."""

    wall_seconds: float
    training_seconds: float
    goodput: float | None
    restarts: int
    preemptions: int
    lost_steps: int | None
    time_to_resume: dict[int, float]


def run_accounting(
    attempts: list[AttemptRecord],
    failures: list[FailureRecord],
    history: list[EpochRecord],
    history_lines: list[EpochRecord],
    ended_at: datetime | None,
    backups: list[BackupRecord] | None = None,
    *,
    branches: list[BranchRecord] | None = None,
    ended_without_backup: Progress | None = None,
) -> Accounting:
    """Wall time, useful training time and goodput (useful / wall), restarts and the steps they lost.

    * wall: each attempt from its start to its last epoch's end (or its failure, or ``ended_at`` for the last
      one), plus every gap from a failure to the next attempt's start (time to resume); time a job sat STOPPED
      is not counted.
    * useful: the seconds of the epochs the final model descends from. An epoch split by a mid-epoch restart
      has a record for its resumed part only; with ``backups`` (``backups.jsonl``), the part before the
      restored backup, in the attempt that wrote it, counts too (``split_epoch_seconds``).
    * lost steps: for each restart, steps from the restored point to where the failed attempt was (its last
      progress report, at most about a second old); for a resume after an end without a backup (a second
      Ctrl+C, a lost head), the same from ``AttemptRecord.previous_reached``, except where a person started a
      new branch (``branches``: going back to a snapshot is a choice, not a loss). ``ended_without_backup``: the
      job ended (STOPPED, FAILED) with its last attempt at this position; steps past the newest backup count
      too, since a resume trains them again.
    """
    wall = sum(held_seconds(attempts, failures, history_lines, ended_at or utc_now()).values())
    gaps = time_to_resume(failures, attempts)
    wall += sum(gaps.values())
    useful = sum(r.seconds for r in history) + split_epoch_seconds(attempts, history_lines, backups or [])
    preemptions = 0
    for index, attempt in enumerate(attempts[1:], start=1):
        previous = attempts[index - 1].started_at
        preemptions += any(f.kind != "failure" for f in failures if previous <= f.failed_at <= attempt.started_at)
    by_attempt = lost_steps_by_attempt(
        attempts, failures, backups or [], branches=branches, ended_without_backup=ended_without_backup
    )
    lost = None if by_attempt is None else sum(by_attempt.values())
    return Accounting(
        wall_seconds=round(wall, 2),
        training_seconds=round(useful, 2),
        goodput=round(useful / wall, 4) if wall > 0 else None,
        restarts=max(0, len(attempts) - 1),
        preemptions=preemptions,
        lost_steps=lost,
        time_to_resume=gaps,
    )


def held_seconds(
    attempts: list[AttemptRecord], failures: list[FailureRecord], history_lines: list[EpochRecord], end: datetime
) -> dict[int, float]:
    """Seconds each attempt held its workers, by attempt number: from its start to its last epoch's end (or its
    failure; ``end`` for the last one, the job's end or now). Their sum is the accounting's wall, less the gaps
    from a failure to the next start (``time_to_resume``)."""
    held: dict[int, float] = {}
    for index, attempt in enumerate(attempts):
        later = attempts[index + 1].started_at if index + 1 < len(attempts) else None
        marks = [r.ended_at for r in history_lines if r.attempt == attempt.attempt]
        marks += [
            f.failed_at
            for f in failures
            if f.failed_at >= attempt.started_at and (later is None or f.failed_at <= later)
        ]
        if later is None:
            marks.append(end)
        last = max(marks, default=attempt.started_at)
        held[attempt.attempt] = held.get(attempt.attempt, 0.0) + max(0.0, (last - attempt.started_at).total_seconds())
    return held


def lost_steps_by_attempt(
    attempts: list[AttemptRecord],
    failures: list[FailureRecord],
    backups: list[BackupRecord],
    *,
    branches: list[BranchRecord] | None = None,
    ended_without_backup: Progress | None = None,
) -> dict[int, int] | None:
    """The steps lost (trained, then trained again), by the attempt that trained them; ``None`` when a restart's
    are not known (an old record). The rules: ``run_accounting``'s lost steps."""
    lost: dict[int, int] = {}
    for index, attempt in enumerate(attempts[1:], start=1):
        previous = attempts[index - 1]
        before = [f for f in failures if previous.started_at <= f.failed_at <= attempt.started_at]  # maybe twice
        steps = _lost_before(before, attempt, branches or [], since=previous.started_at)
        if steps is None:
            return None
        lost[previous.attempt] = lost.get(previous.attempt, 0) + steps
    branched_since = ended_without_backup is not None and any(
        b.created_at > ended_without_backup.updated_at for b in branches or []
    )  # its position is on a superseded branch
    if ended_without_backup is not None and not branched_since:
        last, newest = ended_without_backup, backups[-1:]
        start = (newest[0].epoch, newest[0].step) if newest else (0, 0)  # what a resume would restore
        lost[last.attempt] = lost.get(last.attempt, 0) + steps_after(last, *start)
    return lost


def _lost_before(
    failures: list[FailureRecord], attempt: AttemptRecord, branches: list[BranchRecord], *, since: datetime
) -> int | None:
    """Steps trained before ``attempt`` that it trains again; ``None`` when that is not known (an old record)."""
    if failures:
        failure = failures[-1]
        if failure.epoch is None or failure.step is None or not failure.steps_per_epoch:
            return None
        reached = Position(
            epoch=failure.epoch, step=failure.step, steps_per_epoch=failure.steps_per_epoch, attempt=attempt.attempt
        )
    elif attempt.previous_reached is None or any(since <= b.created_at <= attempt.started_at for b in branches):
        return 0
    else:
        reached = attempt.previous_reached
    return steps_after(reached, attempt.start_epoch, attempt.start_step)


def steps_after(reached: Position | Progress, epoch: int, step: int) -> int:
    """Steps trained past (epoch, step) up to ``reached``: what a restore there trains again."""
    return max(0, reached.epoch * reached.steps_per_epoch + reached.step - (epoch * reached.steps_per_epoch + step))


def split_epoch_seconds(
    attempts: list[AttemptRecord], history_lines: list[EpochRecord], backups: list[BackupRecord]
) -> float:
    """Training time before each mid-epoch restore point, in the attempt that wrote that backup.

    Those steps count toward the final model (the next attempt continued from them), but the epoch's history
    record, written by the attempt that finished it, covers only its resumed part. The part runs from the
    writer's start of that epoch (the end of its previous epoch, or its own start) to the backup's step: the
    backup record's time less its upload and write. Each restored backup counts once.
    """
    records = {backup.name: backup for backup in backups}
    by_number = {attempt.attempt: attempt for attempt in attempts}
    seconds, seen = 0.0, set()
    for attempt in attempts[1:]:
        name = attempt.restored_from
        if name is None or attempt.start_step == 0 or name in seen:
            continue
        seen.add(name)
        backup = records.get(name)
        writer = by_number.get(backup.attempt) if backup is not None else None
        if backup is None or writer is None:
            continue
        taken = backup.at - timedelta(seconds=backup.upload_seconds + backup.blocking_seconds)
        ends = [r.ended_at for r in history_lines if r.attempt == writer.attempt and r.epoch == backup.epoch - 1]
        begin = max([writer.started_at, *ends])
        seconds += max(0.0, (taken - begin).total_seconds())
    return round(seconds, 3)
