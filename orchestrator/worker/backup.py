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
from orchestrator.records import BackupFile, BackupManifest, ControlState
from orchestrator.store import JobStore, file_digest

CHECKPOINT_PREFIX = "state"
T = TypeVar("T")


def backup_name(epoch: int, step: int = 0) -> str:
    """Sortable name of the backup from which training continues at ``epoch`` (0-based), ``step``."""
    return f"e{epoch:05d}-s{step:07d}"


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
    control: ControlState | None = None,
    reason: str = "scheduled",
) -> BackupManifest | None:
    """Write the training state at ``(epoch, step)``; rank 0 uploads it and returns its manifest."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"orchestrator-backup-rank{rank}-") as scratch:
        _checkpoint(model).write(os.path.join(scratch, CHECKPOINT_PREFIX))
        if rank != 0:
            return None
        manifest = _manifest(model, scratch, backup_name(epoch, step), epoch, step, attempt, control, reason)
        store.write_backup(job, scratch, manifest)
    pruned = store.prune_backups(job, keep)
    megabytes = sum(f.size for f in manifest.files.values()) / 1e6
    where = f"after epoch {epoch}" if step == 0 else f"at epoch {epoch + 1}, step {step}"
    why = "" if reason == "scheduled" else f" ({reason})"
    log.info("backup %s taken %s%s: %.2f MB in %.2f s%s", manifest.name, where, why, megabytes,
             time.monotonic() - started, f"; deleted {', '.join(pruned)} (keep {keep})" if pruned else "")  # fmt: skip
    return manifest


def snapshot_name(epoch: int, branch: int) -> str:
    return f"e{epoch:05d}-b{branch}"


def save_snapshot(
    model: Any, store: JobStore, job: str, *, rank: int, epoch: int, attempt: int, control: ControlState,
    log: logging.Logger,
) -> BackupManifest | None:  # fmt: skip
    """A backup kept for good after ``epoch`` epochs, plus the model as a Keras file (``orchestrator export``)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"orchestrator-snapshot-rank{rank}-") as scratch:
        state_dir = os.path.join(scratch, "state")
        os.makedirs(state_dir)
        _checkpoint(model).write(os.path.join(state_dir, CHECKPOINT_PREFIX))
        model_file = os.path.join(scratch, "model.keras")
        model.save(model_file)  # every worker: saving may run collectives
        if rank != 0:
            return None
        name = snapshot_name(epoch, control.branch)
        manifest = _manifest(model, state_dir, name, epoch, 0, attempt, control, "snapshot")
        store.write_snapshot(job, state_dir, manifest, model_file)
    log.info("snapshot %s taken after epoch %d in %.2f s", name, epoch, time.monotonic() - started)
    return manifest


def _manifest(
    model: Any, folder: str, name: str, epoch: int, step: int, attempt: int, control: ControlState | None,
    reason: str,
) -> BackupManifest:  # fmt: skip
    files = {}
    for file in sorted(os.listdir(folder)):
        size, digest = file_digest(os.path.join(folder, file))
        files[file] = BackupFile(size=size, sha256=digest)
    return BackupManifest(
        name=name,
        epoch=epoch,
        step=step,
        attempt=attempt,
        learning_rate=float(keras.backend.get_value(model.optimizer.learning_rate)),
        files=files,
        control=control,
        reason=reason,
    )


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
