"""Backups of the complete training state, and the restore a restarted worker group starts from.

A backup is a ``tf.train.Checkpoint`` of the model and its optimizer (weights, slots, ``iterations``, the
learning-rate variable) plus a manifest with every file's size and sha256, written last (ARCHITECTURE.md hard
part 4). Every worker writes the checkpoint to its own node-local scratch folder, because reading variables
under MultiWorkerMirroredStrategy may run collectives; only rank 0's copy is uploaded, through fsspec, so the
store may be any URL (TensorFlow's own ``gs://`` client cannot be pointed at an emulator: PITFALLS.md 9).

On restart, rank 0 picks the newest backup whose files match their manifest, falling back to older ones with
a logged reason, and broadcasts its choice; every worker then restores that same backup.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any, TypeVar

import ray.train
import tensorflow as tf
import tf_keras as keras
from ray.train.collective import broadcast_from_rank_zero

from orchestrator.errors import BackupMismatchError, StoreError
from orchestrator.records import BackupFile, BackupManifest
from orchestrator.store import JobStore, file_digest

CHECKPOINT_PREFIX = "state"
T = TypeVar("T")


def backup_name(epoch: int, step: int = 0) -> str:
    """Sortable name of the backup from which training continues at ``epoch`` (0-based), ``step``."""
    return f"e{epoch:05d}-s{step:07d}"


class BackupCallback(keras.callbacks.Callback):
    """Backs up at the end of every ``every_epochs``-th epoch and after the last one.

    Args:
        store: the job's store.
        job: the job's name.
        rank: this worker's world rank (rank 0 uploads).
        attempt: the worker group's attempt number, recorded in the manifest.
        epochs: the job's total epochs.
        every_epochs: back up every N epochs.
        keep: complete backups to keep.
        log: where each backup is reported.
    """

    def __init__(
        self,
        store: JobStore,
        job: str,
        *,
        rank: int,
        attempt: int,
        epochs: int,
        every_epochs: int,
        keep: int,
        log: logging.Logger,
    ) -> None:
        super().__init__()
        if every_epochs < 1 or keep < 1:
            raise ValueError(f"Invalid backup settings. Received: every_epochs={every_epochs}, keep={keep}. "
                             "Expected positive integers.")  # fmt: skip
        self._supports_tf_logs = True
        self._store, self._job, self._rank, self._attempt = store, job, rank, attempt
        self._epochs, self._every, self._keep, self._log = epochs, every_epochs, keep, log

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        done = int(epoch) + 1
        if done % self._every == 0 or done == self._epochs:
            self._save(done, 0)

    def _save(self, epoch: int, step: int) -> None:
        save_backup(self.model, self._store, self._job, rank=self._rank, epoch=epoch, step=step,
                    attempt=self._attempt, keep=self._keep, log=self._log)  # fmt: skip


class StepBackupCallback(BackupCallback):
    """Also backs up every ``every_steps`` training steps inside epochs (a separate class: its per-batch hook
    is paid only by jobs that ask for step backups).

    Args:
        steps_per_epoch: global steps in an epoch.
        every_steps: back up each time the job's step count crosses a multiple of this.
        start_epoch: the fit's first epoch.
        first_step: steps already done in that epoch (a resumed partial epoch).
        **kwargs: as for BackupCallback.
    """

    def __init__(
        self, *, steps_per_epoch: int, every_steps: int, start_epoch: int = 0, first_step: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if every_steps < 1:
            raise ValueError(f"Invalid value for `every_steps`. Received: every_steps={every_steps}. "
                             "Expected a positive integer.")  # fmt: skip
        self._steps, self._every_steps, self._first_step = steps_per_epoch, every_steps, first_step
        self._epoch = start_epoch
        self._last_slot = (start_epoch * steps_per_epoch + first_step) // every_steps  # where this fit starts

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = int(epoch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        self._first_step = 0  # a partial epoch is the first and only epoch of its fit

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        done = self._first_step + int(batch) + 1  # steps done in this epoch
        slot = (self._epoch * self._steps + done) // self._every_steps
        if slot > self._last_slot:  # the job's step count crossed a multiple of every_steps
            self._last_slot = slot
            if done < self._steps:  # at an epoch's end the epoch backup, if due, is the one to take
                self._save(self._epoch, done)


def _checkpoint(model: Any) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer)


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
) -> BackupManifest | None:
    """Write the training state at ``(epoch, step)``; rank 0 uploads it and returns its manifest."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"orchestrator-backup-rank{rank}-") as scratch:
        _checkpoint(model).write(os.path.join(scratch, CHECKPOINT_PREFIX))
        if rank != 0:
            return None
        files = {}
        for file in sorted(os.listdir(scratch)):
            size, digest = file_digest(os.path.join(scratch, file))
            files[file] = BackupFile(size=size, sha256=digest)
        manifest = BackupManifest(
            name=backup_name(epoch, step),
            epoch=epoch,
            step=step,
            attempt=attempt,
            learning_rate=float(keras.backend.get_value(model.optimizer.learning_rate)),
            files=files,
        )
        store.write_backup(job, scratch, manifest)
    pruned = store.prune_backups(job, keep)
    megabytes = sum(f.size for f in files.values()) / 1e6
    where = f"after epoch {epoch}" if step == 0 else f"at epoch {epoch + 1}, step {step}"
    log.info("backup %s taken %s: %.2f MB in %.2f s%s", manifest.name, where, megabytes,
             time.monotonic() - started, f"; deleted {', '.join(pruned)} (keep {keep})" if pruned else "")  # fmt: skip
    return manifest


def restore_latest(model: Any, store: JobStore, job: str, *, rank: int, log: logging.Logger) -> BackupManifest | None:
    """Restore every worker to the same backup: the newest complete, verified one (``None``: start afresh).

    Call inside the strategy's scope, after ``compile``, on every worker.
    """
    choice = agreed(_choose(store, job, log) if rank == 0 else None)
    if choice is None:
        return None
    with tempfile.TemporaryDirectory(prefix=f"orchestrator-restore-rank{rank}-") as scratch:
        manifest = store.fetch_backup(job, choice, scratch)
        model.optimizer.build(model.trainable_variables)  # slots exist before the restore, not deferred
        status = _checkpoint(model).read(os.path.join(scratch, CHECKPOINT_PREFIX))
        try:
            status.assert_existing_objects_matched()
        except AssertionError as exc:
            raise BackupMismatchError(
                f"backup {choice} of job '{job}' does not fit this job's model ({str(exc).splitlines()[0]})",
                hint="a backup is only restored into the model that wrote it; start a new job to change the model",
            ) from None
    log.info("restored backup %s (written by attempt %d): resuming at epoch %d, step %d", choice, manifest.attempt,
             manifest.epoch + 1, manifest.step)  # fmt: skip
    return manifest


def agreed(value: T) -> T:
    """Rank 0's ``value`` on every worker (a barrier too): decisions are taken once, never per worker."""
    if ray.train.get_context().get_world_size() > 1:
        return broadcast_from_rank_zero(value)
    return value


def _choose(store: JobStore, job: str, log: logging.Logger) -> str | None:
    """The newest backup whose files match their manifest; each one passed over is logged with the reason."""
    names = store.backup_names(job)
    for name in reversed(names):
        with tempfile.TemporaryDirectory(prefix="orchestrator-verify-") as scratch:
            try:
                store.fetch_backup(job, name, scratch)
            except StoreError as exc:  # files missing or altered (CorruptBackupError), or an unreadable manifest
                log.warning("skipping backup %s: %s; trying an older one", name, exc.message)
                continue
        return name
    if names:
        log.warning("no usable backup among %s: starting from the first epoch", ", ".join(names))
    return None
