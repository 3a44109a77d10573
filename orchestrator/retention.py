"""``orchestrator prune``: a store keeps finished jobs only as long as its retention says.

The policy is the config file's ``[retention]`` (``finished_after = "30d"``, ``keep_snapshots``), or
``--older-than`` / ``--keep-snapshots`` on the command line. A job goes when it ended (SUCCEEDED, STOPPED or
FAILED) at least that long ago: with ``keep_snapshots``, only a SUCCEEDED job's backups (as ``delete
--keep-snapshots``), and a STOPPED or FAILED job stays whole (``resume`` continues from its backups); without,
the whole job. A job that may still run (PENDING, RUNNING, RECOVERING, STOPPING) never goes. Each deletion is
``jobs.delete_job``'s, which checks the status again (a job resumed meanwhile stays) and touches only that job's
files.

:func:`decide` is the whole policy, pure: the jobs' facts in, one decision per job out. :func:`prune` gathers
the facts, and deletes only with ``apply`` (the command's ``--yes``): by default it is a dry run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import ConfigDict
from rich.console import Group, RenderableType
from rich.text import Text

from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.log_times import parse_duration
from orchestrator.records import utc_now
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.user_config import Retention
from orchestrator.views import DeleteOutput, Output

Action = Literal["delete", "delete-backups", "keep"]


@dataclass(frozen=True)
class JobFacts:
    """What the policy needs of a job: its status, when it ended, and whether it still has backups."""

    name: str
    status: JobStatus
    ended_at: datetime
    has_backups: bool


class PruneRow(Output):
    model_config = ConfigDict(extra="forbid")

    name: str
    status: JobStatus
    ended_at: datetime
    action: Action
    why: str


class PruneOutput(Output):
    model_config = ConfigDict(extra="forbid")

    store: str
    older_than: str
    keep_snapshots: bool
    applied: bool  # False: a dry run (nothing deleted)
    jobs: list[PruneRow]
    deleted: list[DeleteOutput]
    unreadable: dict[str, str]

    def render(self) -> RenderableType:
        going = [row for row in self.jobs if row.action != "keep"]
        verb = "deleted" if self.applied else "would delete"
        lines: list[RenderableType] = [
            Text(f"{row.name} ({row.status}, ended {row.ended_at:%Y-%m-%d %H:%M} UTC): {verb} {_what(row)}")
            for row in going
        ]
        kept = len(self.jobs) - len(going)
        policy = f"ended {self.older_than} ago or more" + (", keeping snapshots" if self.keep_snapshots else "")
        if self.applied:
            files = sum(d.files for d in self.deleted)
            size = sum(d.bytes for d in self.deleted) / 1e6
            summary = f"pruned {len(self.deleted)} job(s) ({policy}): {files} files, {size:.1f} MB; kept {kept}"
        else:
            summary = f"{len(going)} job(s) to prune ({policy}); kept {kept}" + (
                "; run again with --yes to delete" if going else ""
            )
        lines.append(Text(summary, style="bold"))
        lines += [Text(f"unreadable: {job}: {why}", style="yellow") for job, why in self.unreadable.items()]
        return Group(*lines)


def _what(row: PruneRow) -> str:
    return "the whole job" if row.action == "delete" else "its backups (records, models, snapshots stay)"


def decide(jobs: list[JobFacts], *, now: datetime, older_than: timedelta, keep_snapshots: bool) -> list[PruneRow]:
    """One decision per job, in the order given: ``delete`` (the whole job), ``delete-backups`` or ``keep``."""
    rows = []
    for job in jobs:
        action: Action = "keep"
        if job.status.is_active():
            why = f"{job.status}: it may still run"
        elif now - job.ended_at < older_than:
            why = f"ended {_age(now - job.ended_at)} ago, less than {_age(older_than)}"
        elif not keep_snapshots:
            action, why = "delete", f"ended {_age(now - job.ended_at)} ago"
        elif job.status is not JobStatus.SUCCEEDED:
            why = f"{job.status}: resume continues from its backups (keep_snapshots keeps them)"
        elif not job.has_backups:
            why = "its backups are deleted already (keep_snapshots keeps the rest)"
        else:
            action, why = "delete-backups", f"ended {_age(now - job.ended_at)} ago"
        rows.append(PruneRow(name=job.name, status=job.status, ended_at=job.ended_at, action=action, why=why))
    return rows


def _age(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}".replace(".0", "")
    return f"{seconds:.0f}s"


def policy(retention: Retention, older_than: str | None, keep_snapshots: bool | None) -> tuple[str, timedelta, bool]:
    """The threshold (as given, and parsed) and keep_snapshots: the options, else the config file's."""
    given = older_than or retention.finished_after
    if given is None:
        raise UsageError(
            "prune: no retention: give --older-than (e.g. 30d), or set finished_after in the config file's "
            "[retention] table",
            hint='e.g. in ~/.config/orchestrator/config.toml: [retention] finished_after = "30d"',
        )
    option = "--older-than" if older_than else "retention.finished_after"
    threshold = parse_duration(given, option)
    keep = retention.keep_snapshots if keep_snapshots is None else keep_snapshots
    return given, threshold, keep


def facts(store: JobStore) -> tuple[list[JobFacts], dict[str, str]]:
    """Every job's facts (read concurrently), oldest end first; and the jobs whose records cannot be read."""
    from orchestrator.jobs import BACKUP_FOLDERS, each_job

    def read(job: str) -> JobFacts:
        state = store.read_state(job)
        backups = state.status is JobStatus.SUCCEEDED and any(
            store.fs.exists(store.path(job, folder)) and store.fs.find(store.path(job, folder))
            for folder in BACKUP_FOLDERS
        )
        return JobFacts(job, state.status, state.ended_at or state.updated_at, bool(backups))

    found = each_job(store.job_names(), read)
    unreadable = {
        job: result.message.removeprefix(f"store {store.url}: ")
        for job, result in found.items()
        if isinstance(result, OrchestratorError)
    }
    readable = [result for result in found.values() if isinstance(result, JobFacts)]
    return sorted(readable, key=lambda job: job.ended_at), unreadable


def prune(
    store: JobStore,
    retention: Retention,
    *,
    older_than: str | None = None,
    keep_snapshots: bool | None = None,
    apply: bool = False,
    now: datetime | None = None,
) -> PruneOutput:
    """Decide for every job in the store; with ``apply``, delete what goes (else a dry run)."""
    from orchestrator.jobs import delete_job

    given, threshold, keep = policy(retention, older_than, keep_snapshots)
    jobs, unreadable = facts(store)
    rows = decide(jobs, now=now or utc_now(), older_than=threshold, keep_snapshots=keep)
    deleted: list[DeleteOutput] = []
    for index, row in enumerate(rows):
        if not apply or row.action == "keep":
            continue
        try:
            deleted.append(delete_job(store, row.name, keep_snapshots=row.action == "delete-backups"))
        except OrchestratorError as error:  # it changed meanwhile (resumed, deleted by another prune)
            rows[index] = row.model_copy(update={"action": "keep", "why": f"not deleted: {error.message}"})
    return PruneOutput(
        store=store.url,
        older_than=given,
        keep_snapshots=keep,
        applied=apply,
        jobs=rows,
        deleted=deleted,
        unreadable=unreadable,
    )
