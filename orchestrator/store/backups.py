"""A job's backups (``checkpoints/<backup>/``, pruned) and snapshots (``snapshots/<snapshot>/``, kept): each
complete once its manifest is written, which comes after every file; fetched and checked file by file against
that manifest."""

from __future__ import annotations

import hashlib
import os
import shutil

from orchestrator.errors import CorruptBackupError, StoreError
from orchestrator.records import BackupManifest, BackupRecord
from orchestrator.store.appends import AppendingStore
from orchestrator.store.fs import _store_errors, file_digest


class BackupStore(AppendingStore):
    """Backups and snapshots of a job, and the record of each backup's cost (``backups.jsonl``)."""

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
        names = self._names_in(self.path(name, "checkpoints"))
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
        manifests = []
        for entry in self._names_in(self.path(name, "snapshots")):
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
