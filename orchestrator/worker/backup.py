"""Backups of the complete training state, and the restore a restarted worker group starts from.

A backup is a ``tf.train.Checkpoint`` of the model and its optimizer (weights, slots, ``iterations``, the
learning-rate variable) plus a manifest with every file's size and sha256, written last (docs/architecture.md,
"Atomic and verifiable backups"). Every worker writes the checkpoint to its own node-local scratch folder,
because reading variables under MultiWorkerMirroredStrategy may run collectives; only rank 0's copy is
uploaded, through fsspec, so the store may be any URL (TensorFlow's own ``gs://`` client cannot be pointed at
an emulator: docs/architecture.md, "TensorFlow's own gs:// client").

On restart, rank 0 picks the newest backup whose files match their manifest, falling back to older ones with
a logged reason, and broadcasts its choice; every worker then restores that same backup (rank 0 from the copy
it has just verified, the others from their own verified download).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import tf_keras as keras

from orchestrator.errors import BackupMismatchError, StoreError
from orchestrator.records import BackupFile, BackupManifest, BackupRecord, ControlState, NoticeSource
from orchestrator.store import JobStore, file_digest
from orchestrator.worker import backup_cache
from orchestrator.worker import scratch as scratch_dirs
from orchestrator.worker.agreement import agreed
from orchestrator.worker.async_writes import (
    ASYNC,
    CHECKPOINT_PREFIX,
    checkpoint_of,
    keep_when_written,
    track,
    writer_of,
    written,
)


def backup_name(epoch: int, step: int = 0) -> str:
    """Sortable name of the backup from which training continues at ``epoch`` (0-based), ``step``."""
    return f"e{epoch:05d}-s{step:07d}"


class BackupUploader:
    """Uploads rank 0's backups from a background thread, so training does not wait on the network.

    One upload at a time: ``submit`` first waits for the previous one (a save never overlaps an unfinished
    upload), and ``wait`` re-raises an upload's error in the training thread. The manifest is still written last,
    so a backup is visible only once complete; the scratch copy is deleted after its upload.
    """

    def __init__(
        self, store: JobStore, job: str, log: logging.Logger, before_commit: Callable[[], None] | None = None
    ) -> None:
        self._store, self._job, self._log = store, job, log
        self._before_commit = before_commit  # e.g. the StoreWriter's flush: history lines land before the backup
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_upload_s = 0.0  # how long the latest finished upload took (the backup interval's lower bound)

    def submit(
        self, scratch: str, pending: dict[str, Any], keep: int, started: float, written: Callable[[], None]
    ) -> None:
        """Upload the backup in ``scratch`` once ``written`` returns (its files are on disk)."""
        self.wait()
        blocking = time.monotonic() - started  # what training waited for: the host copy, and an upload still going
        self._thread = threading.Thread(
            target=self._upload,
            args=(scratch, pending, keep, started, blocking, written),
            name="backup-upload",
            daemon=True,
        )
        self._thread.start()

    def wait(self) -> None:
        """Block until the last upload is stored; raise its error, if it had one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _upload(
        self,
        scratch: str,
        pending: dict[str, Any],
        keep: int,
        started: float,
        blocking: float,
        written: Callable[[], None],
    ) -> None:
        try:
            written()
            uploading = time.monotonic()
            manifest = _manifest(scratch, **pending)
            if self._before_commit is not None:
                self._before_commit()  # never a backup ahead of the history: a restore skips the epochs it holds
            self._store.write_backup(self._job, scratch, manifest)
            pruned = self._store.prune_backups(self._job, keep)
            _log_backup(self._log, manifest, time.monotonic() - started, pruned, keep, background=True)
            self.last_upload_s = time.monotonic() - uploading
            _record_backup(self._store, self._job, manifest, blocking, self.last_upload_s, self._log)
        except BaseException as exc:  # handed to the training thread at the next save or at the end
            self._error = exc
            shutil.rmtree(scratch, ignore_errors=True)
            return
        backup_cache.keep(scratch, manifest.name, self._store.url, self._job, 0)  # for a restore on this node


def save_backup(
    model: Any,
    store: JobStore,
    job: str,
    *,
    rank: int,
    epoch: int,
    step: int,
    attempt: int,
    keep: int,
    log: logging.Logger,
    control: ControlState | None = None,
    reason: str = "scheduled",
    notices: tuple[NoticeSource, ...] = (),
    uploader: BackupUploader | None = None,
) -> None:
    """Write the training state at ``(epoch, step)``; rank 0 uploads it (in the background with ``uploader``)."""
    started = time.monotonic()
    scratch = scratch_dirs.make(f"backup-rank{rank}")
    prefix = os.path.join(scratch, CHECKPOINT_PREFIX)
    checkpoint = writer_of(model)
    try:
        checkpoint.write(prefix, options=ASYNC)  # the host copy; the files are written in the background
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if rank != 0:  # rank 0's copy is the one stored; this one is kept for a restore on this node
        keeper = threading.Thread(
            target=keep_when_written,
            args=(checkpoint, scratch, backup_name(epoch, step), store.url, job, rank),
            name="backup-keep",
            daemon=True,
        )
        keeper.start()
        track(keeper)
        return
    on_disk = functools.partial(written, checkpoint, prefix)
    pending: dict[str, Any] = dict(
        name=backup_name(epoch, step),
        epoch=epoch,
        step=step,
        attempt=attempt,
        control=control,
        reason=reason,
        notices=list(notices),
        learning_rate=float(keras.backend.get_value(model.optimizer.learning_rate)),
    )
    if uploader is not None:
        uploader.submit(scratch, pending, keep, started, on_disk)
        return
    try:
        on_disk()
        uploading = time.monotonic()
        manifest = _manifest(scratch, **pending)
        store.write_backup(job, scratch, manifest)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    backup_cache.keep(scratch, manifest.name, store.url, job, rank)
    _log_backup(log, manifest, time.monotonic() - started, store.prune_backups(job, keep), keep, background=False)
    _record_backup(store, job, manifest, time.monotonic() - started, time.monotonic() - uploading, log)


def _record_backup(
    store: JobStore, job: str, manifest: BackupManifest, blocking: float, upload: float, log: logging.Logger
) -> None:
    """A line in ``backups.jsonl`` for the run accounting; a failure here costs a warning, never the backup."""
    record = BackupRecord(
        name=manifest.name,
        epoch=manifest.epoch,
        step=manifest.step,
        attempt=manifest.attempt,
        reason=manifest.reason,
        blocking_seconds=round(blocking, 4),
        upload_seconds=round(upload, 4),
        size_bytes=sum(f.size for f in manifest.files.values()),
    )
    try:
        store.append_backup_record(job, record)
    except StoreError as exc:
        log.warning("could not record the cost of backup %s: %s", manifest.name, exc.message)


def _log_backup(
    log: logging.Logger, manifest: BackupManifest, seconds: float, pruned: list[str], keep: int, *, background: bool
) -> None:
    megabytes = sum(f.size for f in manifest.files.values()) / 1e6
    epoch, step = manifest.epoch, manifest.step
    where = f"after epoch {epoch}" if step == 0 else f"at epoch {epoch + 1}, step {step}"
    why = "" if manifest.reason == "scheduled" else f" ({manifest.reason})"
    how = " (uploaded in the background)" if background else ""
    log.info(
        "backup %s taken %s%s: %.2f MB in %.2f s%s%s",
        manifest.name,
        where,
        why,
        megabytes,
        seconds,
        how,
        f"; deleted {', '.join(pruned)} (keep {keep})" if pruned else "",
    )


def snapshot_name(epoch: int, branch: int) -> str:
    return f"e{epoch:05d}-b{branch}"


def save_snapshot(
    model: Any,
    store: JobStore,
    job: str,
    *,
    rank: int,
    epoch: int,
    attempt: int,
    control: ControlState,
    log: logging.Logger,
) -> BackupManifest | None:
    """A backup kept for good after ``epoch`` epochs, plus the model as a Keras file (``orchestrator export``)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=scratch_dirs.prefix(f"snapshot-rank{rank}")) as scratch:
        state_dir = os.path.join(scratch, "state")
        os.makedirs(state_dir)
        checkpoint_of(model).write(os.path.join(state_dir, CHECKPOINT_PREFIX))
        model_file = os.path.join(scratch, "model.keras")
        model.save(model_file)  # every worker: saving may run collectives
        if rank != 0:
            return None
        name = snapshot_name(epoch, control.branch)
        manifest = _manifest(
            state_dir,
            name=name,
            epoch=epoch,
            step=0,
            attempt=attempt,
            control=control,
            reason="snapshot",
            learning_rate=float(keras.backend.get_value(model.optimizer.learning_rate)),
        )
        store.write_snapshot(job, state_dir, manifest, model_file)
    log.info("snapshot %s taken after epoch %d in %.2f s", name, epoch, time.monotonic() - started)
    return manifest


def _manifest(
    folder: str,
    *,
    name: str,
    epoch: int,
    step: int,
    attempt: int,
    control: ControlState | None,
    reason: str,
    learning_rate: float,
    notices: list[NoticeSource] | None = None,
) -> BackupManifest:
    files = {}
    for file in sorted(os.listdir(folder)):
        size, digest = file_digest(os.path.join(folder, file))
        files[file] = BackupFile(size=size, sha256=digest)
    return BackupManifest(
        name=name,
        epoch=epoch,
        step=step,
        attempt=attempt,
        learning_rate=learning_rate,
        files=files,
        control=control,
        reason=reason,
        notices=notices or [],
    )


def restore_latest(model: Any, store: JobStore, job: str, *, rank: int, log: logging.Logger) -> BackupManifest | None:
    """Restore every worker to the same backup: the newest complete, verified one (``None``: start afresh).

    Call inside the strategy's scope, after ``compile``, on every worker.
    """
    with tempfile.TemporaryDirectory(prefix=scratch_dirs.prefix(f"fetched-rank{rank}")) as fetched:
        choice = choose_backup(store, job, rank=rank, log=log, keep_in=fetched)
        return restore_backup(model, store, job, choice.name, rank=rank, log=log, fetched=fetched) if choice else None


def choose_backup(
    store: JobStore, job: str, *, rank: int, log: logging.Logger, keep_in: str | None = None
) -> BackupManifest | None:
    """The backup every worker will restore (rank 0 chooses, every worker gets its manifest), or ``None``.

    Rank 0 downloads and verifies candidates; with ``keep_in``, the chosen one's verified files stay in
    ``keep_in/<name>`` for ``restore_backup(fetched=keep_in)``, which then reads them instead of downloading
    and hashing them a second time (a second or two per 600 MB here).
    """
    return BackupPrefetch(store, job, rank=rank, log=log, keep_in=keep_in).agreed()


class BackupPrefetch:
    """The choice of the backup to restore, fetched in a background thread from the attempt's very start.

    Fetching only reads the store and this node's disk (no TensorFlow), so it overlaps the strategy's and the
    model's set-up instead of following them: rank 0 downloads and verifies the newest good backup (the choice,
    ``agreed`` once the model is built); every other rank fetches and verifies the same newest one for itself,
    quietly, so that its restore finds the files in ``keep_in`` when rank 0 chose that backup (it nearly always
    does; when not, ``restore_backup`` downloads the chosen one as before).
    """

    def __init__(self, store: JobStore, job: str, *, rank: int, log: logging.Logger, keep_in: str | None) -> None:
        self._store, self._job, self._rank, self._keep_in = store, job, rank, keep_in
        self._log = log
        self._choice: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch, name="backup-prefetch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            # only rank 0's choice counts: the others' passing over a backup is not worth a warning
            quiet = self._rank != 0
            self._choice = _choose(self._store, self._job, self._log, self._keep_in, rank=self._rank, quiet=quiet)
        except BaseException as exc:  # re-raised on the training thread by agreed() (rank 0), or ignored
            self._error = exc

    def agreed(self) -> BackupManifest | None:
        """Rank 0's choice, on every worker (a collective: call on all of them)."""
        manifest = None
        if self._rank == 0:
            self._thread.join()
            if self._error is not None:
                raise self._error
            manifest = self._store.read_manifest(self._job, self._choice) if self._choice is not None else None
        return agreed(manifest)

    def wait(self) -> None:
        """Until this rank's fetch is done (its files in ``keep_in``, or not): before ``restore_backup``."""
        self._thread.join()


def restore_backup(
    model: Any, store: JobStore, job: str, choice: str, *, rank: int, log: logging.Logger, fetched: str | None = None
) -> BackupManifest:
    """Restore ``choice`` into ``model`` and its optimizer (compiled as the backup's writer had it).

    ``fetched``: a folder where ``choose_backup`` kept this worker's verified copy of ``choice``, if it did.
    """
    kept = os.path.join(fetched, choice) if fetched is not None else None
    with tempfile.TemporaryDirectory(prefix=scratch_dirs.prefix(f"restore-rank{rank}")) as scratch:
        if kept is not None and os.path.isdir(kept):
            folder, manifest = kept, store.read_manifest(job, choice)
        else:
            local = backup_cache.lookup(choice, store.url, job, rank)
            folder, manifest = scratch, store.fetch_backup(job, choice, scratch, local_copy=local)
            _log_local(log, store, choice, len(manifest.files))
        model.optimizer.build(model.trainable_variables)  # slots exist before the restore, not deferred
        status = checkpoint_of(model).read(os.path.join(folder, CHECKPOINT_PREFIX))
        try:
            status.assert_existing_objects_matched()
            status.expect_partial()  # the async writer's own save counter, which nothing here restores
        except AssertionError as exc:
            raise BackupMismatchError(
                f"backup {choice} of job '{job}' does not fit this job's model ({str(exc).splitlines()[0]})",
                hint="a backup is only restored into the model that wrote it; start a new job to change the model",
            ) from None
    log.info(
        "restored backup %s (written by attempt %d): resuming at epoch %d, step %d",
        choice,
        manifest.attempt,
        manifest.epoch + 1,
        manifest.step,
    )
    return manifest


def _log_local(log: logging.Logger, store: JobStore, name: str, files: int) -> None:
    if store.last_fetch_local:
        log.info(
            "backup %s: %d of %d file(s) read from this node's copy, not downloaded",
            name,
            store.last_fetch_local,
            files,
        )


def _choose(
    store: JobStore, job: str, log: logging.Logger, keep_in: str | None, rank: int = 0, quiet: bool = False
) -> str | None:
    """The newest backup whose files match their manifest; each one passed over is logged with the reason (at
    debug level if ``quiet``). With ``keep_in``, the chosen backup's verified files stay in ``keep_in/<name>``."""
    warn = log.debug if quiet else log.warning
    names = store.backup_names(job)
    for name in reversed(names):
        folder = os.path.join(keep_in, name) if keep_in is not None else scratch_dirs.make("verify")
        os.makedirs(folder, exist_ok=True)
        try:
            manifest = store.fetch_backup(job, name, folder, local_copy=backup_cache.lookup(name, store.url, job, rank))
            _log_local(log, store, name, len(manifest.files))
        except StoreError as exc:  # files missing or altered (CorruptBackupError), or an unreadable manifest
            warn("skipping backup %s: %s; trying an older one", name, exc.message)
            shutil.rmtree(folder, ignore_errors=True)
            continue
        if keep_in is None:
            shutil.rmtree(folder, ignore_errors=True)
        return name
    if names:
        warn("no usable backup among %s: starting from the first epoch", ", ".join(names))
    return None
