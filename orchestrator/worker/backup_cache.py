"""The newest backup kept on the node's own disk, so that a restart on the same node restores without a download.

Every worker writes each backup to a scratch folder first (``backup.save_backup``); once the store holds it (rank
0's upload), the scratch copy moves here instead of being deleted, replacing the previous one. A restore on
the same node then reads whatever files of the chosen backup this copy has with the size and sha256 its
manifest in the store names, and downloads only the rest. The store's copy stays the durable one: the local
copy is never used without its manifest, and a node that is gone takes only a cache with it.

One folder per store, job and rank (``$ORCHESTRATOR_CACHE``, default ``~/.orchestrator/cache``), holding one
backup; a job that ends with its model trained removes its folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

CACHE_ENV = "ORCHESTRATOR_CACHE"


def _root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".orchestrator" / "cache") / "backups"


def job_folder(store_url: str, job: str) -> Path:
    key = hashlib.sha256(f"{store_url}\n{job}".encode()).hexdigest()[:16]
    return _root() / f"{job}-{key}"


def rank_folder(store_url: str, job: str, rank: int) -> Path:
    return job_folder(store_url, job) / f"rank{rank}"


def keep(scratch: str, name: str, store_url: str, job: str, rank: int) -> bool:
    """Move ``scratch`` (backup ``name``, now stored) to this node's cache, replacing the older copy.

    Returns False (and deletes ``scratch``) when the cache cannot be written: it is only a shortcut.
    """
    folder = rank_folder(store_url, job, rank)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if target.exists():
            shutil.rmtree(target)
        shutil.move(scratch, target)
        for older in folder.iterdir():
            if older.name != name:
                shutil.rmtree(older, ignore_errors=True)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        return False
    return True


def lookup(name: str, store_url: str, job: str, rank: int) -> str | None:
    """This node's copy of backup ``name`` for ``rank``, if it has one (its files are checked by the caller)."""
    folder = rank_folder(store_url, job, rank) / name
    return str(folder) if folder.is_dir() else None


def forget(store_url: str, job: str, rank: int) -> None:
    """Remove this rank's cached backup (the job has its final model; nothing will restore from it here)."""
    shutil.rmtree(rank_folder(store_url, job, rank), ignore_errors=True)
    with contextlib.suppress(OSError):  # the last rank on this node removes the job's folder
        job_folder(store_url, job).rmdir()
