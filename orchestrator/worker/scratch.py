"""A worker's scratch folders, named after the process that made them, and the sweep of those left behind.

A worker writes backups, plots and event files into temporary folders first and removes them when done; a
worker that is SIGKILLed (a preemption, the OOM killer, a test) leaves them, up to a whole checkpoint each. On
a node that outlives its workers (a restart on the same machine, a local run) they would pile up with every
kill. So each folder's name carries its process id (``orchestrator-<kind>-p<pid>-<random>``), and the first
worker of each attempt on a node removes, in the background, the folders of processes that are gone. A folder
whose process still runs (or whose pid was reused: the check cannot tell) is left alone.

Versions before the pid was in the name left ``orchestrator-backup-rank0-<random>`` and the like: those
(``LEGACY``) are removed once untouched for ``LEGACY_AGE_S``, far longer than any backup, plot or restore
takes to write.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

NAME = re.compile(r"^orchestrator-[a-z0-9-]+?-p(?P<pid>\d+)-[a-z0-9_]+$")
LEGACY = re.compile(r"^orchestrator-(?:(?:backup|fetched|snapshot|restore)-rank\d+|plot|events|verify)-[a-z0-9_]{8}$")
LEGACY_AGE_S = 24 * 3600.0


def prefix(kind: str) -> str:
    """The ``prefix`` of a ``tempfile.mkdtemp``/``TemporaryDirectory`` for this process's ``kind`` of folder."""
    return f"orchestrator-{kind}-p{os.getpid()}-"


def make(kind: str) -> str:
    """A new scratch folder of ``kind`` for this process (the caller removes it)."""
    return tempfile.mkdtemp(prefix=prefix(kind))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep(log: logging.Logger, root: str | None = None) -> tuple[int, int]:
    """Remove the scratch folders under ``root`` (the temp folder) of processes that are gone; returns how many
    and their bytes, and logs it once when there were any."""
    folders, size = 0, 0
    base = Path(root or tempfile.gettempdir())
    try:
        entries = list(base.iterdir())
    except OSError:
        return 0, 0
    for entry in entries:
        if not _left_behind(entry) or not entry.is_dir() or entry.is_symlink():
            continue
        size += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(entry, ignore_errors=True)
        folders += 1
    if folders:
        log.info(
            "removed %d scratch folder(s) (%.1f MB) that killed workers left in %s",
            folders,
            size / 1e6,
            base,
        )
    return folders, size


def _left_behind(entry: Path) -> bool:
    """Whether ``entry`` is a scratch folder whose process is gone, or an older version's, long untouched."""
    match = NAME.match(entry.name)
    if match is not None:
        return not _alive(int(match["pid"]))
    if LEGACY.match(entry.name) is None:
        return False
    try:
        return time.time() - entry.stat().st_mtime > LEGACY_AGE_S
    except OSError:
        return False
