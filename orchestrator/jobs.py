"""A store's jobs as a person looks after them: ``list`` (by status, at most N), ``logs`` (a few sources, the
last lines, followed by reading only the new bytes) and ``delete`` (never a job a driver may still write to).

Nothing here prints: each function returns the output model the CLI renders, or raises an OrchestratorError.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.log_times import SinceFilter
from orchestrator.records import JobState, Progress
from orchestrator.status import JobStatus
from orchestrator.store import JobStore, join_pieces
from orchestrator.views import (
    DeleteOutput,
    JobListOutput,
    JobRow,
    LiveSnapshot,
    LogsOutput,
    WatchEvent,
    brief_spec,
    describe_spec,
)

STATUS_RULE = f"one of {', '.join(JobStatus)} (any case; repeat --status, or separate with commas)"
SOURCE_PATTERN = re.compile(r"driver|controller|worker(-\d+)?|\d+")
SOURCE_RULE = "driver, controller, worker (every rank), worker-N or N (rank N); repeat --source for several"
READERS = 16  # reads `list` runs at once
T = TypeVar("T")
# What `delete --keep-snapshots` deletes: the backups a resume continues from, and Ray Train's run folder.
BACKUP_FOLDERS = ("checkpoints", "ray")


def parse_statuses(values: list[str] | None) -> list[JobStatus]:
    """``--status`` values (``running``, ``STOPPED,FAILED``) as statuses, in the order given, each once."""
    statuses: list[JobStatus] = []
    for value in values or []:
        for part in value.split(","):
            try:
                status = JobStatus(part.strip().upper())
            except ValueError:
                raise UsageError(f"--status: got {part.strip()!r}, must be {STATUS_RULE}") from None
            if status not in statuses:
                statuses.append(status)
    return statuses


def list_jobs(store: JobStore, statuses: list[JobStatus], limit: int | None) -> JobListOutput:
    """The store's jobs, newest first: those in ``statuses`` (all if empty), at most ``limit``.

    The jobs' records are read concurrently (a cloud store answers each read in tens of milliseconds), and
    only what a row needs: the states of the jobs that can be listed, the history and attempts of those listed.
    A job whose records cannot be read is reported apart and never hides the others.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"--limit: got {limit}, must be a number of jobs (>= 1)")
    unreadable: dict[str, str] = {}

    def readable(results: dict[str, T | OrchestratorError]) -> dict[str, T]:
        for job, result in results.items():
            if isinstance(result, OrchestratorError):
                unreadable[job] = result.message.removeprefix(f"store {store.url}: ")
        return {job: result for job, result in results.items() if not isinstance(result, OrchestratorError)}

    records = sorted(
        readable(each_job(store.job_names(), store.load_job)).values(),
        key=lambda record: record.created_at,
        reverse=True,
    )
    candidates = records if statuses or limit is None else records[:limit]
    states = readable(each_job([record.name for record in candidates], store.read_state))
    chosen = [r for r in candidates if r.name in states and (not statuses or states[r.name].status in statuses)]
    chosen = chosen[:limit] if limit is not None else chosen
    details = readable(
        each_job([r.name for r in chosen], lambda job: (store.read_history(job), store.read_attempts(job)))
    )
    rows = [
        JobRow(
            name=record.name,
            status=states[record.name].status,
            attempt=len(details[record.name][1]),
            epoch=len({r.epoch for r in details[record.name][0]}) or None,
            epochs=record.spec.epochs,
            created_at=record.created_at,
            updated_at=states[record.name].updated_at,
            summary=describe_spec(record.spec),
            brief=brief_spec(record.spec),
        )
        for record in chosen
        if record.name in details
    ]
    return JobListOutput(store=store.url, jobs=rows, unreadable=unreadable, statuses=statuses, limit=limit)


def each_job(jobs: list[str], read: Callable[[str], T]) -> dict[str, T | OrchestratorError]:
    """``read(job)`` for every job, up to READERS at once; a job's error is its result, never the others'."""

    def attempt(job: str) -> T | OrchestratorError:
        try:
            return read(job)
        except OrchestratorError as error:
            return error

    if len(jobs) <= 1:
        return {job: attempt(job) for job in jobs}
    with ThreadPoolExecutor(max_workers=min(READERS, len(jobs))) as pool:
        return dict(zip(jobs, pool.map(attempt, jobs), strict=True))


def parse_sources(values: list[str] | None) -> list[str]:
    """``--source`` values, checked: ``driver``, ``controller``, ``worker``, ``worker-N``, or ``N`` for worker-N."""
    sources: list[str] = []
    for value in values or []:
        if not SOURCE_PATTERN.fullmatch(value):
            raise UsageError(f"--source: got {value!r}, must be {SOURCE_RULE}")
        source = f"worker-{int(value)}" if value.isdigit() else value
        if source not in sources:
            sources.append(source)
    return sources


def _from_source(log: str, sources: list[str]) -> bool:
    stem = log.removesuffix(".log")
    return not sources or stem in sources or ("worker" in sources and stem.startswith("worker-"))


def _check_tail(tail: int | None) -> None:
    if tail is not None and tail < 0:
        raise UsageError(f"--tail: got {tail}, must be a number of lines (>= 0)")


def _last_lines(text: str, tail: int | None) -> str:
    if tail is None:
        return text
    return "".join(text.splitlines(keepends=True)[-tail:]) if tail else ""


def read_logs(
    store: JobStore, job: str, sources: list[str], tail: int | None, since: datetime | None = None
) -> LogsOutput:
    """The job's logs from ``sources`` (all if empty): the lines at or after ``since`` (``log_times``), then the
    last ``tail`` of those; only the chosen logs are read."""
    _check_tail(tail)
    kept = SinceFilter(since, store.load_job(job).created_at)
    pieces = store.log_pieces(job)
    chosen = [log for log in pieces if _from_source(log, sources)]
    if sources and pieces and not chosen:
        have = ", ".join(log.removesuffix(".log") for log in pieces)
        raise UsageError(f"--source: got {', '.join(sources)}, but job '{job}' has logs from: {have}")
    texts = {
        log: join_pieces([store.read_log(job, piece) for piece, _ in pieces[log]]).decode(errors="replace")
        for log in chosen
    }
    return LogsOutput(name=job, logs={log: _last_lines(kept.text(log, text), tail) for log, text in texts.items()})


@dataclass
class LogFollower:
    """``logs -f``: each poll returns the complete lines added since the last, as (source, line); a log is read
    from the byte where the last poll stopped, and only when its size says it grew. With ``since``, only the
    lines at or after it (then ``tail`` of those, on a log's first read)."""

    store: JobStore
    job: str
    sources: list[str]
    tail: int | None = None
    since: datetime | None = None
    offsets: dict[str, int] = field(default_factory=dict)  # by log piece
    seen: set[str] = field(default_factory=set)  # logs read from before: --tail applies to the others
    kept: SinceFilter = field(init=False)

    def __post_init__(self) -> None:
        _check_tail(self.tail)
        self.kept = SinceFilter(self.since, self.store.load_job(self.job).created_at)

    def poll(self) -> list[tuple[str, str]]:
        lines: list[tuple[str, str]] = []
        for log, pieces in self.store.log_pieces(self.job).items():
            if not _from_source(log, self.sources):
                continue
            texts = []
            for piece, size in pieces:  # on an object store, each process's part of the log (store.log_pieces)
                start = self.offsets.get(piece, 0)
                if size <= start:
                    continue
                data = self.store.read_log(self.job, piece, start)
                complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
                self.offsets[piece] = start + len(complete)
                texts.append(complete.decode(errors="replace"))
            if not texts:
                continue
            text = self.kept.text(log, "".join(texts))
            if log not in self.seen:
                self.seen.add(log)
                text = _last_lines(text, self.tail)
            lines += [(log.removesuffix(".log"), line) for line in text.splitlines()]
        return lines


@dataclass
class WatchEvents:
    """``watch --json``: from each snapshot of the job, the events since the previous one (a changed status, a
    new progress report, each newly finished epoch once; ``end`` once the job has ended)."""

    job: str
    state: JobState | None = None
    progress: Progress | None = None
    epochs: set[tuple[int, int, int, str]] = field(default_factory=set)

    def events(self, snapshot: LiveSnapshot) -> list[WatchEvent]:
        found: list[WatchEvent] = []
        if snapshot.state != self.state:
            self.state = snapshot.state
            found.append(WatchEvent(event="state", job=self.job, state=snapshot.state))
        for record in snapshot.history:
            key = (record.epoch, record.branch, record.attempt, record.ended_at.isoformat())
            if key not in self.epochs:
                self.epochs.add(key)
                found.append(WatchEvent(event="epoch", job=self.job, epoch=record))
        if snapshot.progress is not None and snapshot.progress != self.progress:
            self.progress = snapshot.progress
            found.append(WatchEvent(event="progress", job=self.job, progress=snapshot.progress))
        if snapshot.state.status.is_terminal():
            found.append(WatchEvent(event="end", job=self.job, state=snapshot.state))
        return found


def delete_job(store: JobStore, job: str, *, keep_snapshots: bool) -> DeleteOutput:
    """Delete a job's folder from the store, or with ``keep_snapshots`` only its backups and Ray's run folder
    (its records, history, models and snapshots stay: ``export --epoch`` and ``resume --from-epoch`` work).

    Raises:
        UsageError: the job may still be written to (PENDING, RUNNING, RECOVERING, STOPPING), or, with
            ``keep_snapshots``, it can still be resumed from those backups (STOPPED, FAILED).
    """
    store.load_job(job)
    status = store.read_state(job).status
    if status.is_active():
        raise UsageError(
            f"job '{job}' is {status}: delete refuses a job whose driver may still write to the store",
            hint=f"stop it first (orchestrator stop {job}; for a submitted job: orchestrator cancel {job}), "
            "then delete it",
        )
    if keep_snapshots and status is not JobStatus.SUCCEEDED:
        raise UsageError(
            f"--keep-snapshots: job '{job}' is {status}, and `orchestrator resume {job}` continues from its backups:"
            " only a SUCCEEDED job's backups are deleted on their own",
            hint=f"delete the whole job (without --keep-snapshots), or resume {job} to its end first",
        )
    if not keep_snapshots:
        files, size = store.delete_job_files(job)
        return DeleteOutput(name=job, store=store.url, status=status, whole=True, files=files, bytes=size)
    files, size = store.delete_job_files(job, *BACKUP_FOLDERS)
    kept = [manifest.name for manifest in store.snapshot_manifests(job)]
    store.append_log(job, "driver.log", f"delete --keep-snapshots: its backups deleted ({files} files, {size} bytes)\n")
    return DeleteOutput(
        name=job, store=store.url, status=status, whole=False, files=files, bytes=size, kept_snapshots=kept
    )
