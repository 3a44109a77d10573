"""The store's records of a job, one method pair per file (each file and its writer: docs/architecture.md, "Who
writes what"): the job, its status (through ``set_status`` only), its driver, progress, history, attempts,
failures, resizes, commands and acks, branches, endings and the workers' summaries."""

from __future__ import annotations

import difflib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from orchestrator.errors import JobExistsError, JobNotFoundError, StoreError
from orchestrator.records import (
    AttemptRecord,
    BranchRecord,
    Command,
    CommandAck,
    DriverRecord,
    Ending,
    EpochRecord,
    Evaluation,
    FailureRecord,
    JobRecord,
    JobState,
    Position,
    Progress,
    ResizeRecord,
    TrackingRecord,
    WorkerStart,
    WorkerSummary,
    utc_now,
)
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus, check_transition
from orchestrator.store.backups import BackupStore
from orchestrator.store.fs import _store_errors, validate_job_name

log = logging.getLogger("orchestrator.store")  # the CLI prints its warnings


def superseded(record: EpochRecord, branches: list[BranchRecord]) -> bool:
    """True for an epoch of a branch that a later branch forked before (``resume --from-epoch``)."""
    return any(b.branch > record.branch and record.epoch >= b.from_epoch for b in branches)


class JobStore(BackupStore):
    """A store root on any fsspec URL (``file://``, a plain path, ``gs://``, ``s3://``, ``memory://``)."""

    # ---------------------------------------------------------------------------------------- jobs
    @_store_errors
    def create_job(self, spec: JobSpec, *, spec_path: str | None = None) -> JobRecord:
        """Record a new job with status PENDING; refuses a name already taken."""
        name = validate_job_name(spec.name)
        record = JobRecord(name=name, id=uuid.uuid4().hex[:12], created_at=utc_now(), spec_path=spec_path, spec=spec)
        self._claim_name(name)
        try:
            self._create_record(name, record)
        except BaseException:
            if self.is_local:  # give the name back: nothing of this job was recorded
                shutil.rmtree(self.job_dir(name), ignore_errors=True)
            raise
        self.set_status(name, JobStatus.PENDING)
        return record

    def _create_record(self, name: str, record: JobRecord) -> None:
        path = self.path(name, "job.json")
        data = record.model_dump_json(indent=2).encode()
        if self.is_local:
            self._write_bytes(path, data)
            return
        try:  # an object store refuses the second of two racing creators (where it honours the precondition)
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            raise JobExistsError(
                f"a job named '{name}' already exists in store {self.url}",
                hint=f"give this run another name with --name, or see: orchestrator status {name}",
            ) from None

    def _claim_name(self, name: str) -> None:
        taken = JobExistsError(
            f"a job named '{name}' already exists in store {self.url}",
            hint=f"give this run another name with --name, or see: orchestrator status {name}",
        )
        directory = self.job_dir(name)
        if self.is_local:
            Path(directory).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(directory)  # atomic: exactly one of two racing creators succeeds
            except FileExistsError:
                raise taken from None
        elif self.fs.exists(f"{directory}/job.json"):
            raise taken

    @_store_errors
    def load_job(self, name: str) -> JobRecord:
        try:
            return self._read_model(self.path(name, "job.json"), JobRecord)
        except FileNotFoundError:
            raise self._not_found(name) from None

    @_store_errors
    def job_names(self) -> list[str]:
        jobs_dir = f"{self.root}/jobs"
        return [n for n in self._names_in(jobs_dir) if self.fs.exists(f"{jobs_dir}/{n}/job.json")]

    @_store_errors
    def delete_job_files(self, name: str, *folders: str) -> tuple[int, int]:
        """Delete the job's folder, or only these folders of it; the files and bytes deleted.

        Only paths under ``jobs/<name>/`` are touched, whatever the backend's listing returns (an object store
        lists by prefix: ``jobs/quick`` must not reach ``jobs/quickstart``). A whole job loses its ``job.json``
        first, so an interrupted delete leaves no half job in ``list``; a local folder goes whole, so its name
        can be taken again.
        """
        targets = [self.path(name, folder) for folder in folders] if folders else [self.job_dir(name)]
        files = size = 0
        for target in targets:
            try:
                found = self.fs.find(target, detail=True, withdirs=False)
            except FileNotFoundError:
                found = {}
            inside = {str(path): info for path, info in found.items() if str(path).startswith(target + "/")}
            files += len(inside)
            size += sum(int(info.get("size") or 0) for info in inside.values())
            record = f"{target}/job.json"
            if record in inside:
                self.fs.rm_file(record)
            if self.is_local:
                if os.path.isdir(target):
                    shutil.rmtree(target)
            elif rest := sorted(set(inside) - {record}):
                self.fs.rm(rest)
        return files, size

    def _not_found(self, name: str) -> JobNotFoundError:
        close = difflib.get_close_matches(name, self.job_names(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see: orchestrator list"
        return JobNotFoundError(f"no job named '{name}' in store {self.url}", hint=hint)

    # -------------------------------------------------------------------------------------- status
    @_store_errors
    def read_state(self, name: str) -> JobState:
        try:
            return self._read_model(self.path(name, "status.json"), JobState)
        except FileNotFoundError:
            if self.fs.exists(self.path(name, "job.json")):
                return JobState(status=JobStatus.PENDING)  # recorded a moment ago; its status is being written
            raise self._not_found(name) from None

    @_store_errors
    def set_status(self, name: str, status: JobStatus, reason: str | None = None, **changes: Any) -> JobState:
        """Move the job to ``status`` because of ``reason``, and apply ``changes``: the one function that writes
        ``status.json``. The change is checked against ``status.ALLOWED_TRANSITIONS`` and the reason recorded
        with it (``None``: none; a previous status's reason never carries over to the next).

        Only the job's owner calls it: its driving process while the status is active, or a process that knows
        that driver is gone (``lifecycle``; docs/architecture.md, "One lifecycle owner").
        A job that becomes STOPPED was stopped by a person (``stopped_by="user"``) unless ``changes`` say
        otherwise; any other status clears ``stopped_by``.
        """
        path = self.path(name, "status.json")
        try:
            current = self._read_model(path, JobState)
        except FileNotFoundError:
            current = JobState(status=JobStatus.PENDING)
        check_transition(name, current.status, status)
        if status is not JobStatus.STOPPED:
            changes["stopped_by"] = None
        elif current.status is not JobStatus.STOPPED:
            changes.setdefault("stopped_by", "user")
        update = {**changes, "status": status, "reason": reason, "updated_at": utc_now()}
        state = current.model_copy(update=update)
        self._write_model(path, JobState.model_validate(state.model_dump()))
        return state

    # -------------------------------------------------------------------------------------- driver
    @_store_errors
    def write_driver(self, name: str, record: DriverRecord) -> None:
        self._write_model(self.path(name, "driver.json"), record)

    @_store_errors
    def read_driver(self, name: str) -> DriverRecord | None:
        """The process that drives (or last drove) the job; None for a job no driver of this version drove."""
        try:
            return self._read_model(self.path(name, "driver.json"), DriverRecord)
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------------------------ progress
    @_store_errors
    def write_progress(self, name: str, progress: Progress) -> None:
        self._write_model(self.path(name, "progress.json"), progress)

    @_store_errors
    def read_progress(self, name: str) -> Progress | None:
        try:
            return self._read_model(self.path(name, "progress.json"), Progress)
        except FileNotFoundError:
            return None

    def _progress_or_none(self, name: str) -> Progress | None:
        """``read_progress``, but a damaged file is only a warning: an attempt must start without it."""
        try:
            return self.read_progress(name)
        except StoreError as exc:
            log.warning("previous attempt's position not recorded: %s", exc)
            return None

    # ------------------------------------------------------------------------------------- history
    @_store_errors
    def append_history(self, name: str, record: EpochRecord) -> None:
        self._append_line(self.path(name, "history.jsonl"), record)

    @_store_errors
    def read_history(self, name: str) -> list[EpochRecord]:
        """The live run, one record per epoch, in epoch order: when an epoch was trained again after a restore
        (its first run was lost with a worker before its backup completed), the later line is the one that
        counts; and a branch's epochs from its fork on are gone from it once ``resume --from-epoch`` started a
        later branch there, even before the new branch has trained them again (``read_history_lines`` keeps
        them)."""
        branches = self.read_branches(name)
        latest: dict[int, EpochRecord] = {}
        for record in self.read_history_lines(name):
            if not superseded(record, branches):
                latest[record.epoch] = record
        return [latest[epoch] for epoch in sorted(latest)]

    @_store_errors
    def read_history_lines(self, name: str) -> list[EpochRecord]:
        """Every line ever written, superseded ones included (the audit trail of every attempt)."""
        return self._read_lines(self.path(name, "history.jsonl"), EpochRecord, skip_damaged=True)

    # ------------------------------------------------------------------------------------ attempts
    @_store_errors
    def start_attempt(
        self,
        name: str,
        *,
        start_epoch: int,
        start_step: int = 0,
        restored_from: str | None,
        startup: dict[str, float] | None = None,
        workers: list[WorkerStart] | None = None,
        replicas: int | None = None,
    ) -> AttemptRecord:
        """Record that a worker group started (rank 0 calls this once per group); numbers attempts from 1."""
        attempts = self.read_attempts(name)
        progress = self._progress_or_none(name)  # still the previous attempt's: this one has not reported yet
        record = AttemptRecord(
            attempt=len(attempts) + 1,
            start_epoch=start_epoch,
            start_step=start_step,
            restored_from=restored_from,
            startup=startup or {},
            workers=workers or [],
            replicas=replicas,
            previous_reached=Position(
                epoch=progress.epoch,
                step=progress.step,
                steps_per_epoch=progress.steps_per_epoch,
                attempt=progress.attempt,
            )
            if progress is not None and attempts and progress.attempt == attempts[-1].attempt
            else None,
        )
        self._append_line(self.path(name, "attempts.jsonl"), record)
        return record

    @_store_errors
    def read_attempts(self, name: str) -> list[AttemptRecord]:
        return self._read_lines(self.path(name, "attempts.jsonl"), AttemptRecord)

    # ------------------------------------------------------------------------------------- failures
    @_store_errors
    def append_failure(self, name: str, record: FailureRecord) -> None:
        self._append_line(self.path(name, "failures.jsonl"), record)

    @_store_errors
    def read_failures(self, name: str) -> list[FailureRecord]:
        """In time order: two writers record failures (Ray Train's controller, rank 0 at a drain's deadline)."""
        return sorted(self._read_lines(self.path(name, "failures.jsonl"), FailureRecord), key=lambda f: f.failed_at)

    @_store_errors
    def append_resize(self, name: str, record: ResizeRecord) -> None:
        self._append_line(self.path(name, "resizes.jsonl"), record)

    @_store_errors
    def read_resizes(self, name: str) -> list[ResizeRecord]:
        return self._read_lines(self.path(name, "resizes.jsonl"), ResizeRecord, skip_damaged=True)

    # ------------------------------------------------------------------------------------ commands
    @_store_errors
    def add_command(self, name: str, command: Command) -> Command:
        """Append a command with the next free sequence number; two racing writers both get one (in order)."""
        for _ in range(100):
            seq = max((c.seq for c in self.read_commands(name)), default=0) + 1
            numbered = command.model_copy(update={"seq": seq})
            if self._create_exclusive(self.path(name, "commands", f"{seq:06d}.json"), numbered):
                return numbered
        raise StoreError(f"store {self.url}: could not number a command for job '{name}' (100 racing writers?)")

    @_store_errors
    def read_commands(self, name: str) -> list[Command]:
        return self._read_folder(self.path(name, "commands"), Command)

    @_store_errors
    def write_ack(self, name: str, ack: CommandAck) -> bool:
        """Record a command's first effect; False when one is recorded already (the first one stands)."""
        return self._create_exclusive(self.path(name, "acks", f"{ack.seq:06d}.json"), ack)

    @_store_errors
    def read_acks(self, name: str) -> dict[int, CommandAck]:
        return {ack.seq: ack for ack in self._read_folder(self.path(name, "acks"), CommandAck)}

    # ------------------------------------------------------------------------------------ tracking
    @_store_errors
    def write_tracking(self, name: str, record: TrackingRecord) -> None:
        self._write_model(self.path(name, "tracking.json"), record)

    @_store_errors
    def read_tracking(self, name: str) -> TrackingRecord | None:
        try:
            return self._read_model(self.path(name, "tracking.json"), TrackingRecord)
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------------------------ branches
    @_store_errors
    def add_branch(self, name: str, *, from_epoch: int, snapshot: str) -> BranchRecord:
        record = BranchRecord(branch=len(self.read_branches(name)) + 1, from_epoch=from_epoch, snapshot=snapshot)
        self._append_line(self.path(name, "branches.jsonl"), record)
        return record

    @_store_errors
    def read_branches(self, name: str) -> list[BranchRecord]:
        return self._read_lines(self.path(name, "branches.jsonl"), BranchRecord)

    # ------------------------------------------------------------------------------------- endings
    @_store_errors
    def write_ending(self, name: str, ending: Ending) -> None:
        self._write_model(self.path(name, "ending.json"), ending)

    @_store_errors
    def write_evaluation(self, name: str, evaluation: Evaluation) -> None:
        self._write_model(self.path(name, "evaluation.json"), evaluation)

    @_store_errors
    def read_evaluation(self, name: str) -> Evaluation | None:
        try:
            return self._read_model(self.path(name, "evaluation.json"), Evaluation)
        except FileNotFoundError:
            return None

    @_store_errors
    def read_ending(self, name: str) -> Ending | None:
        try:
            return self._read_model(self.path(name, "ending.json"), Ending)
        except FileNotFoundError:
            return None

    @_store_errors
    def clear_ending(self, name: str) -> None:
        path = self.path(name, "ending.json")
        if self.fs.exists(path):
            self.fs.rm_file(path)

    # ------------------------------------------------------------------------------------- workers
    @_store_errors
    def write_worker_summary(self, name: str, summary: WorkerSummary) -> None:
        self._write_model(self.path(name, "workers", f"rank-{summary.rank}.json"), summary)

    @_store_errors
    def read_worker_summaries(self, name: str) -> list[WorkerSummary]:
        try:
            files = sorted(self.fs.ls(self.path(name, "workers"), detail=False, refresh=True))
        except FileNotFoundError:
            return []
        return [self._read_model(str(f), WorkerSummary) for f in files if str(f).endswith(".json")]
