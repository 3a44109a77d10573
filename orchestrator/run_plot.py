"""The run's plot from the store: ``orchestrator plot`` draws it, and rank 0 redraws ``plots/run.png`` from it after
every epoch (``orchestrator.worker.plots``). Reads the store; the drawing itself is ``orchestrator.plot``'s (pure)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Literal

from orchestrator.errors import UsageError
from orchestrator.records import AttemptRecord, BranchRecord, CommandAck, EpochRecord, FailureRecord
from orchestrator.store import JobStore

if TYPE_CHECKING:
    from datetime import datetime

    from orchestrator.plot import Marker, PlotData


def run_plot_data(store: JobStore, job: str, metrics: list[str] | None) -> PlotData:
    """The plot's data from the store: live and superseded history lines, and a marker per event.

    An event is superseded (drawn faintly) when it happened on a branch that a later ``resume --from-epoch``
    forked before it: before the branch was created, past its fork.
    """
    from orchestrator import plot

    store.load_job(job)
    branches = store.read_branches(job)
    lines = store.read_history_lines(job)
    live = {(r.epoch, r.branch, r.ended_at) for r in store.read_history(job)}
    points = [
        plot.EpochPoint(
            epoch=r.epoch,
            learning_rate=r.learning_rate,
            end_learning_rate=r.end_learning_rate,
            metrics=r.metrics,
            segment=r.segment,
            phase=r.phase,
            superseded=(r.epoch, r.branch, r.ended_at) not in live,
        )
        for r in lines
    ]
    steps = _steps(store, job)
    failures = store.read_failures(job)
    markers = _restart_markers(store.read_attempts(job), failures, branches, steps)
    markers += _command_markers(store, job, branches, lines, steps)
    for failure in failures:
        position = _failure_position(failure, lines, steps)
        kind: Literal["preemption", "failure"] = "failure" if failure.kind == "failure" else "preemption"
        label = {"failure": "worker failed", "preemption": "preempted", "notice": "preempted (notice)"}[failure.kind]
        markers.append(plot.Marker(position, kind, label, _forked_later(branches, position, failure.failed_at)))
    for branch in branches:
        label = f"resume --from-epoch {branch.from_epoch} (branch {branch.branch})"
        markers.append(plot.Marker(float(branch.from_epoch), "resume", label))
    try:
        return plot.plot_data(job, points, markers, metrics)
    except ValueError as exc:
        raise UsageError(f"--metric: {exc}") from None


def _forked_later(branches: list[BranchRecord], position: float, moment: datetime) -> bool:
    return any(moment < b.created_at and position > b.from_epoch for b in branches)


def _restart_markers(
    attempts: list[AttemptRecord], failures: list[FailureRecord], branches: list[BranchRecord], steps: int
) -> list[Marker]:
    """A marker where each attempt after the first started: restarted after a failure, or resumed."""
    from orchestrator import plot

    markers = []
    for before, attempt in itertools.pairwise(attempts):
        if any(before.started_at < b.created_at <= attempt.started_at for b in branches):
            continue  # the branch's own marker says it
        failed = any(before.started_at < f.failed_at <= attempt.started_at for f in failures)
        position = attempt.start_epoch + attempt.start_step / steps
        label = f"{'restarted' if failed else 'resumed'} (attempt {attempt.attempt})"
        markers.append(plot.Marker(position, "resume", label, _forked_later(branches, position, attempt.started_at)))
    return markers


def _command_markers(
    store: JobStore, job: str, branches: list[BranchRecord], lines: list[EpochRecord], steps: int
) -> list[Marker]:
    """A marker where each acknowledged stop and set-lr took effect."""
    from orchestrator import plot

    markers = []
    acks = store.read_acks(job)
    for command in store.read_commands(job):
        ack = acks.get(command.seq)
        if ack is None:
            continue
        position = ack.epoch + ack.step / steps
        superseded = any(b.branch > ack.branch and position >= b.from_epoch for b in branches)
        if command.kind == "stop":
            superseded = any(b.branch > ack.branch and position > b.from_epoch for b in branches)
            markers.append(plot.Marker(position, "stop", "stopped", superseded))
        elif ack.learning_rate is not None:
            old = _learning_rate_before(ack, lines)
            change = f"{old:g}→{ack.learning_rate:g}" if old is not None else f"→{ack.learning_rate:g}"
            label = f"set-lr{' --now' if command.when == 'now' else ''} {change}"
            markers.append(plot.Marker(position, "lr", label, superseded))
    return markers


def _steps(store: JobStore, job: str) -> int:
    progress = store.read_progress(job)
    return max(1, progress.steps_per_epoch) if progress else 1


def _learning_rate_before(ack: CommandAck, lines: list[EpochRecord]) -> float | None:
    """The LR a set-lr replaced: its epoch's starting rate inside an epoch, else the rate the epoch before ended at."""
    if ack.step > 0:
        return next((r.learning_rate for r in lines if (r.epoch, r.branch) == (ack.epoch, ack.branch)), None)
    before = [r for r in lines if r.epoch == ack.epoch - 1 and r.branch <= ack.branch and r.ended_at <= ack.applied_at]
    last = max(before, key=lambda r: r.ended_at, default=None)
    return None if last is None else (last.end_learning_rate or last.learning_rate)


def _failure_position(failure: FailureRecord, lines: list[EpochRecord], steps: int) -> float:
    """Epochs done when the worker group failed: where progress.json said training was, or else the epochs done
    by the last history line written before it (of whichever branch was training then)."""
    if failure.epoch is not None:
        return failure.epoch + (failure.step or 0) / max(1, failure.steps_per_epoch or steps)
    before = [r for r in lines if r.ended_at <= failure.failed_at]
    return float(max(before, key=lambda r: r.ended_at).epoch + 1) if before else 0.0
