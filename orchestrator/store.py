"""The job store: every read and write of a job's files goes through here, on any fsspec URL.

Layout under the root URL (all of it, with each file's writer: docs/architecture.md)::

    jobs/<job>/job.json         JobRecord, written once
    jobs/<job>/status.json      JobState (the job's owner, through set_status: orchestrator.lifecycle)
    jobs/<job>/driver.json      DriverRecord (the driving process: its lease)
    jobs/<job>/progress.json    Progress (rank 0)
    jobs/<job>/history.jsonl    EpochRecord per line (rank 0)
    jobs/<job>/workers/rank-N.json
    jobs/<job>/logs/

Writes are atomic: a local file is written beside its target and renamed over it; an object store (gs://,
s3://, memory://) replaces an object in one put. A reader never sees half a file. Appends never lose another
writer's line: O_APPEND on a local folder, one part per process (``<file>.parts/<part>``, read back merged) on
an object store (docs/architecture.md, "Appends").

Example::

    store = JobStore("file:///tmp/store")
    store.create_job(record)
    store.set_status("quickstart", JobStatus.RUNNING)
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ValidationError

from orchestrator.errors import (
    CorruptBackupError,
    JobExistsError,
    JobNotFoundError,
    OrchestratorError,
    StoreError,
    UsageError,
)
from orchestrator.reach import host_port, unreachable
from orchestrator.records import (
    AttemptRecord,
    BackupManifest,
    BackupRecord,
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
    WorkerStart,
    WorkerSummary,
    utc_now,
)
from orchestrator.spec import JOB_NAME_PATTERN, JOB_NAME_RULE, JobSpec
from orchestrator.status import JobStatus, check_transition
from orchestrator.user_config import load_config

log = logging.getLogger("orchestrator.store")  # the CLI prints its warnings (a damaged line skipped)

STORE_ENV = "ORCHESTRATOR_STORE"
DEFAULT_STORE = Path.home() / ".orchestrator" / "store"

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


def default_store_url(option: str | None = None) -> str:
    """The store root: ``--store``, else ``$ORCHESTRATOR_STORE``, else the config file's ``store``, else
    ``~/.orchestrator/store``."""
    return option or os.environ.get(STORE_ENV) or load_config().store or str(DEFAULT_STORE)


def file_digest(path: str) -> tuple[int, str]:
    """Size and sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def validate_job_name(name: str) -> str:
    if not re.fullmatch(JOB_NAME_PATTERN, name):
        raise UsageError(f"job name: got {name!r}, must be {JOB_NAME_RULE}")
    return name


def describe_invalid(exc: ValidationError) -> str:
    """What is wrong with a record, in a few words: ``metrics.loss: Input should be a valid number``."""
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in problem["loc"])
    message = problem["msg"].replace("Invalid JSON: ", "not valid JSON: ")
    return f"{where}: {message}" if where else message


DAMAGED_FILE = (
    "the file was damaged, or written by another version of orchestrator: restore it from a copy, or move it out "
    "of the store"
)
DAMAGED_LINE = (
    "the line was damaged, or written by another version of orchestrator: restore the file from a copy, or delete "
    "that line"
)


def superseded(record: EpochRecord, branches: list[BranchRecord]) -> bool:
    """True for an epoch of a branch that a later branch forked before (``resume --from-epoch``)."""
    return any(b.branch > record.branch and record.epoch >= b.from_epoch for b in branches)


def _on_google_cloud() -> bool:
    """Whether this machine may have a Google metadata server: a GCE VM (its firmware says Google), or one named
    in the environment. The test google-auth makes itself, without the network (``detect_gce_residency_linux``)."""
    if any(os.environ.get(key) for key in ("GCE_METADATA_HOST", "GCE_METADATA_ROOT", "GCE_METADATA_IP")):
        return True
    try:
        return Path("/sys/class/dmi/id/product_name").read_text().strip().startswith("Google")
    except OSError:
        return False


@contextmanager
def _no_metadata_server_credentials(url: str) -> Iterator[None]:
    """gcsfs looks for credentials in turn: Application Default Credentials, its token cache, the metadata server
    ("cloud"), anonymous. Off Google Cloud, its "cloud" step retries a metadata server that is not there for about
    15 s (5 attempts with backoff) before every gs:// command falls back to anonymous access: skipped there, as
    gcsfs skips it under ``NO_GCE_CHECK=true``. ADC (``gcloud auth application-default login``, a service account
    key) is found first as before; a user's own ``NO_GCE_CHECK`` (even ``false``) is left as it is.

    The variable is set only while the filesystem is made: google-auth, imported before, read its own copy at
    import, so its metadata server detection for ADC is unchanged."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("gs", "gcs") or "NO_GCE_CHECK" in os.environ or _on_google_cloud():
        yield
        return
    import gcsfs  # noqa: F401  # imports google.auth's metadata module (which reads NO_GCE_CHECK once) first

    os.environ["NO_GCE_CHECK"] = "true"
    try:
        yield
    finally:
        os.environ.pop("NO_GCE_CHECK", None)


def _http_endpoint(fs: Any) -> str | None:
    """The URL gcsfs sends a gs:// store's requests to (Google's, or ``$STORAGE_EMULATOR_HOST``); ``None`` for other
    filesystems, or a gcsfs session through a proxy or a connector of the user's (where a direct probe says
    nothing)."""
    location = getattr(fs, "_location", None) if "gs" in getattr(fs, "protocol", ()) else None
    session_kwargs = getattr(fs, "session_kwargs", None) or {}
    if not isinstance(location, str) or session_kwargs.get("trust_env") or "connector" in session_kwargs:
        return None
    return location


PARTS = ".parts"  # on an object store, <file>.parts/<part>: one process's appends to <file>


class _OwnParts:
    """This process's part of each file it appends to on an object store (named once, at its first append),
    with a lock against this process's other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, tuple[str, threading.Lock]] = {}

    def of(self, url: str) -> tuple[str, threading.Lock]:
        with self._lock:
            if url not in self._parts:
                host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
                name = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                self._parts[url] = (name, threading.Lock())
            return self._parts[url]


_own_parts = _OwnParts()


def _new_process() -> None:
    global _own_parts
    _own_parts = _OwnParts()  # a forked child is another writer: parts of its own


os.register_at_fork(after_in_child=_new_process)


def join_pieces(pieces: list[bytes]) -> bytes:
    """An appended file's pieces as one text: a piece that does not end its last line (a log's half line) is
    ended, so that the next piece's first line stays a line of its own."""
    last = len(pieces) - 1
    return b"".join(p if not p or p.endswith(b"\n") or i == last else p + b"\n" for i, p in enumerate(pieces))


def _store_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a filesystem failure (network, permission, bad bucket) into a StoreError naming the store."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (OrchestratorError, FileNotFoundError):
            raise
        except ValidationError as exc:  # records read through _read_model/_read_lines name their file already
            store = args[0]
            url = store.url if isinstance(store, JobStore) else "?"
            raise StoreError(f"store {url}: a {exc.title} record is invalid ({describe_invalid(exc)})") from exc
        except Exception as exc:  # every backend (gcsfs, s3fs, ...) has its own error classes: all mean "store"
            store = args[0]
            url = store.url if isinstance(store, JobStore) else "?"
            raise StoreError(
                f"store {url}: {type(exc).__name__}: {exc}",
                hint="check the URL and credentials, or pick another store with --store or $" + STORE_ENV,
            ) from exc

    return wrapper


class JobStore:
    """A store root on any fsspec URL (``file://``, a plain path, ``gs://``, ``s3://``, ``memory://``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.last_fetch_local = 0  # files the last fetch_backup took from a local copy instead of the store
        try:
            with _no_metadata_server_credentials(url):
                self.fs, root = fsspec.core.url_to_fs(url)
        except ImportError as exc:
            raise StoreError(
                f"store {url}: cannot open it ({exc})",
                hint="install the filesystem package it names (pip install s3fs for s3://), or use a local folder",
            ) from exc
        except ValueError as exc:
            raise StoreError(
                f"store {url}: cannot open it ({exc})",
                hint="use a local folder, file://, gs://, s3:// or memory:// URL",
            ) from exc
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def check_reachable(self) -> None:
        """Fail in seconds, naming the store and its endpoint, when an object store over HTTP (``gs://``) cannot be
        reached for certain (an unknown host, a refused connection), where gcsfs would retry for about 33 s per
        read; an endpoint that does not answer is waited for, saying so, up to ``reach.WAIT_S``.

        Raises:
            StoreError: the endpoint cannot be reached.
        """
        endpoint = _http_endpoint(self.fs)
        target = host_port(endpoint) if endpoint else None
        if endpoint is None or target is None:
            return
        why = unreachable(*target, f"store {self.url} (its endpoint {endpoint})")
        if why is None:
            return
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        hint = (
            f"start the emulator at $STORAGE_EMULATOR_HOST ({emulator}), or unset it to use Google Cloud Storage"
            if emulator and emulator != "default"
            else "check this machine's network (and a firewall or proxy in the way), or pick another store with "
            f"--store or ${STORE_ENV}"
        )
        raise StoreError(f"store {self.url}: cannot reach {endpoint}: {why}", hint=hint)

    # ------------------------------------------------------------------------------------------ paths
    def job_dir(self, name: str) -> str:
        return f"{self.root}/jobs/{validate_job_name(name)}"

    def path(self, name: str, *parts: str) -> str:
        return "/".join((self.job_dir(name), *parts))

    def url_of(self, name: str, *parts: str) -> str:
        """A full URL (with scheme) for a path in a job's folder, for code that talks to fsspec itself."""
        path = self.path(name, *parts)
        return path if self.is_local else self.fs.unstrip_protocol(path)

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
        try:
            entries = self.fs.ls(jobs_dir, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        names = sorted(str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries)
        return [n for n in names if self.fs.exists(f"{jobs_dir}/{n}/job.json")]

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

    # ------------------------------------------------------------------------------------- backups
    @_store_errors
    def append_backup_record(self, name: str, record: BackupRecord) -> None:
        self._append_line(self.path(name, "backups.jsonl"), record)

    @_store_errors
    def read_backup_records(self, name: str) -> list[BackupRecord]:
        return self._read_lines(self.path(name, "backups.jsonl"), BackupRecord, skip_damaged=True)

    @_store_errors
    def backup_names(self, name: str) -> list[str]:
        """Complete backups (those with a manifest), oldest first."""
        try:
            entries = self.fs.ls(self.path(name, "checkpoints"), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        names = sorted(str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries)
        return [n for n in names if self.fs.exists(self.path(name, "checkpoints", n, "manifest.json"))]

    @_store_errors
    def write_backup(self, name: str, local_dir: str, manifest: BackupManifest) -> None:
        """Upload a backup's files, then its manifest: a reader never sees a manifest without every file."""
        for file in manifest.files:
            self.upload_file(name, os.path.join(local_dir, file), "checkpoints", manifest.name, file)
        self._write_model(self.path(name, "checkpoints", manifest.name, "manifest.json"), manifest)

    @_store_errors
    def fetch_backup(self, name: str, backup: str, local_dir: str, local_copy: str | None = None) -> BackupManifest:
        """Download a backup into ``local_dir`` and check every file against its manifest.

        ``local_copy``: a folder on this machine that may hold the same backup (the node's cache): each of its
        files whose size and sha256 match the manifest is copied from there instead of downloaded. How many
        were is in ``last_fetch_local``.

        Raises:
            CorruptBackupError: a file is missing, or its size or checksum differs from the manifest.
        """
        manifest = self._read_model(self.path(name, "checkpoints", backup, "manifest.json"), BackupManifest)
        self.last_fetch_local = 0
        for file, expected in manifest.files.items():
            local = os.path.join(local_dir, file)
            cached = os.path.join(local_copy, file) if local_copy is not None else None
            if (
                cached is not None
                and os.path.isfile(cached)
                and file_digest(cached) == (expected.size, expected.sha256)
            ):
                shutil.copyfile(cached, local)
                self.last_fetch_local += 1
                continue
            try:
                self.fs.get_file(self.path(name, "checkpoints", backup, file), local)
            except FileNotFoundError:
                raise CorruptBackupError(f"backup {backup} of job '{name}': {file} is missing") from None
            size, digest = file_digest(local)
            if (size, digest) != (expected.size, expected.sha256):
                raise CorruptBackupError(
                    f"backup {backup} of job '{name}': {file} has {size} bytes, sha256 {digest[:12]}; "
                    f"its manifest says {expected.size} bytes, sha256 {expected.sha256[:12]}"
                )
        return manifest

    @_store_errors
    def prune_backups(self, name: str, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` complete backups (manifest first, so none is ever half-visible)."""
        doomed = self.backup_names(name)[:-keep]
        for backup in doomed:
            folder = self.path(name, "checkpoints", backup)
            self.fs.rm_file(f"{folder}/manifest.json")
            self.fs.rm(folder, recursive=True)
        return doomed

    @_store_errors
    def backup_problem(
        self, name: str, backup: str, *, folder: str = "checkpoints", checksums: bool = False
    ) -> str | None:
        """Why a backup (or snapshot) with a manifest is damaged: a file missing, of another size or, with
        ``checksums`` (which reads every file), another sha256 than its manifest says. None when it matches."""
        manifest_path = self.path(name, folder, backup, "manifest.json")
        try:
            manifest = self._read_model(manifest_path, BackupManifest)
        except FileNotFoundError:
            return None  # pruned since it was listed: gone, not damaged
        except StoreError as exc:
            return exc.message.removeprefix(f"store {self.url}: ")
        for file, expected in manifest.files.items():
            path = self.path(name, folder, backup, file)
            try:
                size = self.fs.size(path)
            except FileNotFoundError:
                return None if not self.fs.exists(manifest_path) else f"{file} is missing"  # or being pruned
            if size != expected.size:
                return f"{file} has {size} bytes, its manifest says {expected.size}"
            if checksums:
                digest = hashlib.sha256()
                with self.fs.open(path, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
                if digest.hexdigest() != expected.sha256:
                    return f"{file} has sha256 {digest.hexdigest()[:12]}, its manifest says {expected.sha256[:12]}"
        return None

    @_store_errors
    def read_manifest(self, name: str, backup: str, *, folder: str = "checkpoints") -> BackupManifest:
        return self._read_model(self.path(name, folder, backup, "manifest.json"), BackupManifest)

    # ----------------------------------------------------------------------------------- snapshots
    @_store_errors
    def write_snapshot(self, name: str, local_dir: str, manifest: BackupManifest, model_file: str) -> None:
        """A backup kept for good (``snapshots/<name>``, never pruned) plus the model as a Keras file."""
        for file in manifest.files:
            self.upload_file(name, os.path.join(local_dir, file), "snapshots", manifest.name, file)
        self.upload_file(name, model_file, "snapshots", manifest.name, "model.keras")
        self._write_model(self.path(name, "snapshots", manifest.name, "manifest.json"), manifest)

    @_store_errors
    def snapshot_manifests(self, name: str) -> list[BackupManifest]:
        """Complete snapshots, oldest first."""
        try:
            entries = self.fs.ls(self.path(name, "snapshots"), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        manifests = []
        for entry in sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries):
            try:
                manifests.append(self.read_manifest(name, entry, folder="snapshots"))
            except FileNotFoundError:
                continue  # still being written
        return manifests

    @_store_errors
    def restart_from_snapshot(self, name: str, snapshot: BackupManifest, branch: int) -> list[str]:
        """Make ``snapshot`` the only backup, as the start of ``branch``; returns the backups it replaced.

        The snapshot's files are copied into ``checkpoints/`` first (complete, manifest last), then every other
        backup is deleted: a restarted worker group can only resume on the new branch.
        """
        target = f"{snapshot.name.split('-b')[0]}-s0000000-b{branch}"
        folder = self.path(name, "checkpoints", target)
        if self.is_local:
            os.makedirs(folder, exist_ok=True)
        for file in snapshot.files:
            self.fs.copy(self.path(name, "snapshots", snapshot.name, file), f"{folder}/{file}")
        copied = snapshot.model_copy(update={"name": target, "reason": f"resume from snapshot {snapshot.name}"})
        self._write_model(f"{folder}/manifest.json", copied)
        replaced = [b for b in self.backup_names(name) if b != target]
        for backup in replaced:
            old = self.path(name, "checkpoints", backup)
            self.fs.rm_file(f"{old}/manifest.json")
            self.fs.rm(old, recursive=True)
        return replaced

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

    # ---------------------------------------------------------------------------------------- files
    @_store_errors
    def upload_file(self, name: str, local_path: str, *parts: str) -> str:
        """Copy a local file into the job's folder; it appears under its name only once complete."""
        target = self.path(name, *parts)
        if self.is_local:
            with self._local_temp_beside(target) as temp:
                shutil.copyfile(local_path, temp)
                os.replace(temp, target)
        else:
            self.fs.put_file(local_path, target)
        return self.url_of(name, *parts)

    @_store_errors
    def download_file(self, name: str, local_path: str, *parts: str) -> None:
        """Copy a file of the job's folder to ``local_path``."""
        self.fs.get_file(self.path(name, *parts), local_path)

    def dataset_cache_url(self, dataset: str) -> str:
        """Where a downloaded public dataset is cached, shared by every job of this store."""
        path = f"{self.root}/datasets/{dataset}.npz"
        return path if self.is_local else self.fs.unstrip_protocol(path)

    # ---------------------------------------------------------------------------------------- logs
    @_store_errors
    def write_log(self, name: str, log: str, text: str) -> None:
        self._write_bytes(self.path(name, "logs", log), text.encode())

    @_store_errors
    def append_log(self, name: str, log: str, text: str) -> None:
        self._append_bytes(self.path(name, "logs", log), text.encode())

    @_store_errors
    def log_pieces(self, name: str) -> dict[str, list[tuple[str, int]]]:
        """Each log of the job (``driver.log``, ...) with its stored pieces in reading order, each as its path under
        ``logs/`` and its size in bytes (one listing, no reads): on a local folder the log's file; on an object
        store the whole object an older version wrote, then each process's part (``driver.log.parts/<part>``)."""
        folder = self.path(name, "logs")
        try:
            if self.is_local:
                entries = self.fs.ls(folder, detail=True, refresh=True)
                found = {str(e["name"]): e for e in entries if e.get("type") == "file"}
            else:
                found = {str(path): e for path, e in self.fs.find(folder, detail=True).items()}
        except FileNotFoundError:
            return {}
        pieces: dict[str, list[tuple[str, int]]] = {}
        for path in sorted(found):
            piece = path.removeprefix(folder + "/")
            log, _, part = piece.partition(PARTS + "/")
            if log.startswith(".tmp-") or "/" in log or (not part and PARTS in piece) or "/" in part:
                continue  # a local file being written, or something the store did not write
            pieces.setdefault(log, []).append((piece, int(found[path].get("size") or 0)))
        return {log: sorted(pieces[log], key=lambda p: (PARTS in p[0], p[0])) for log in sorted(pieces)}

    @_store_errors
    def read_log(self, name: str, piece: str, start: int = 0) -> bytes:
        """A log piece's bytes (``log_pieces``) from ``start`` on (a range read: ``logs -f`` fetches only what is
        new)."""
        data: bytes = self.fs.cat_file(self.path(name, "logs", piece), start=start)
        return data

    @_store_errors
    def read_logs(self, name: str) -> dict[str, str]:
        """Every log of the job, whole, its pieces merged."""
        return {
            log: join_pieces([self.read_log(name, piece) for piece, _ in pieces]).decode(errors="replace")
            for log, pieces in self.log_pieces(name).items()
        }

    # --------------------------------------------------------------------------------- primitives
    def _create_exclusive(self, path: str, record: BaseModel) -> bool:
        """Write ``path`` only if it does not exist (atomically); False when another writer got there first."""
        data = record.model_dump_json(indent=2).encode()
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with self._local_temp_beside(path) as temp:
                Path(temp).write_bytes(data)
                try:
                    os.link(temp, path)  # atomic, and fails if the name is taken: complete content or nothing
                except FileExistsError:
                    return False
            return True
        try:
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def _read_folder(self, folder: str, model: type[M]) -> list[M]:
        try:
            files = sorted(str(f) for f in self.fs.ls(folder, detail=False, refresh=True))
        except FileNotFoundError:
            return []
        return [self._read_model(f, model) for f in files if f.endswith(".json") and "/.tmp-" not in f]

    def _append_line(self, path: str, record: BaseModel) -> None:
        self._append_bytes(path, record.model_dump_json().encode() + b"\n")

    def _append_bytes(self, path: str, data: bytes) -> None:
        """Append ``data`` so that no other appender's data is ever lost (docs/architecture.md, "Appends").

        A local file is opened with O_APPEND and written in one ``write()``: the kernel places each write at the
        end, whoever else appends. An object store cannot append, and a read-modify-write of one shared object
        loses whatever another process appended in between: each process appends to its own part instead,
        ``<file>.parts/<part>`` (read-modify-write of an object no other process writes, under a lock against
        this process's other threads); readers merge the parts (:meth:`_pieces`).
        """
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(handle, view) :]
            finally:
                os.close(handle)
            return
        part, lock = _own_parts.of(self.fs.unstrip_protocol(path))
        part_path = f"{path}{PARTS}/{part}"
        with lock:
            try:
                existing = self._read_bytes(part_path)
            except FileNotFoundError:
                existing = b""
            self._write_bytes(part_path, existing + data)

    def _pieces(self, path: str) -> list[tuple[str, bytes]]:
        """An appended file's stored pieces, in reading order, with their bytes: a local file is one piece; on an
        object store, the whole object (written by versions before parts), then every process's part, oldest
        part first (a part's name starts with the UTC time of its first append).

        Raises:
            FileNotFoundError: there is no piece at all.
        """
        if self.is_local:
            return [(path, self._read_bytes(path))]
        try:
            parts = sorted(str(p) for p in self.fs.ls(path + PARTS, detail=False, refresh=True))
        except FileNotFoundError:
            parts = []
        wanted = [path, *parts]
        found = self.fs.cat(wanted, on_error="return")
        pieces: list[tuple[str, bytes]] = []
        for piece in wanted:
            data = found.get(self.fs._strip_protocol(piece), FileNotFoundError(piece))
            if isinstance(data, FileNotFoundError):
                continue  # no whole object (a job of this version), or a part deleted since the listing
            if isinstance(data, BaseException):
                raise data
            pieces.append((piece, data))
        if not pieces:
            raise FileNotFoundError(path)
        return pieces

    def _read_appended(self, path: str) -> bytes:
        """An appended file's bytes, its pieces merged (see :meth:`_pieces`)."""
        return join_pieces([data for _, data in self._pieces(path)])

    def _read_lines(self, path: str, model: type[M], *, skip_damaged: bool = False) -> list[M]:
        """Every record of a JSON-lines file (all its pieces). A damaged line is an error naming the file (or
        part) and the line, or, with ``skip_damaged`` (records that only report, such as the history), skipped
        with a warning. A local file's last line without its newline is one still being appended: it is read
        next time."""
        try:
            pieces = self._pieces(path)
        except FileNotFoundError:
            return []
        records: list[M] = []
        for piece, data in pieces:
            lines = data.split(b"\n")
            if self.is_local and lines:
                lines[-1] = b""  # b"" after the last newline; else the start of a line being written
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                try:
                    records.append(model.model_validate_json(raw.decode("utf-8")))
                except UnicodeDecodeError as exc:
                    problem = f"not UTF-8 text (byte {exc.start + 1} of the line)"
                except ValidationError as exc:
                    problem = describe_invalid(exc)
                else:
                    continue
                where = f"store {self.url}: {self._relative(piece)} line {number}"
                if not skip_damaged:
                    raise StoreError(f"{where} is unreadable ({problem})", hint=DAMAGED_LINE)
                log.warning("%s is unreadable (%s); it is left out, the file's other lines are read", where, problem)
        return records

    def _read_model(self, path: str, model: type[M]) -> M:
        data = self._read_bytes(path)
        try:
            return model.model_validate_json(data)
        except ValidationError as exc:
            problem = describe_invalid(exc)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text (byte {exc.start + 1})"
        raise StoreError(f"store {self.url}: {self._relative(path)} is unreadable ({problem})", hint=DAMAGED_FILE)

    def _relative(self, path: str) -> str:
        """A path inside the store as a person finds it there: ``jobs/<job>/history.jsonl``."""
        return path.removeprefix(self.root).lstrip("/")

    def _write_model(self, path: str, value: BaseModel) -> None:
        self._write_bytes(path, value.model_dump_json(indent=2).encode())

    def _read_bytes(self, path: str) -> bytes:
        data: bytes = self.fs.cat_file(path)
        return data

    def _write_bytes(self, path: str, data: bytes) -> None:
        if self.is_local:
            with self._local_temp_beside(path) as temp:
                Path(temp).write_bytes(data)
                os.replace(temp, path)
        else:
            self.fs.pipe_file(path, data)

    @contextmanager
    def _local_temp_beside(self, path: str) -> Iterator[str]:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
        os.close(fd)
        try:
            yield temp
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
