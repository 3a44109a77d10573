"""A worker's scratch folders, named after the process that made them, and the sweep of those left behind.

A worker writes backups, plots and event files into temporary folders first and removes them when done; a
worker that is SIGKILLed (a preemption, the OOM killer, a test) leaves them, up to a whole checkpoint each. On
a node that outlives its workers (a restart on the same machine, a local run) they would pile up with every
kill. So each folder's name carries its process id (``orchestrator-<kind>-p<pid>-<random>``), and the first
worker of each attempt on a node removes, in the background, the folders of processes that are gone. A folder
whose process still runs (or whose pid was reused: the check cannot tell) is left alone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

NAME = re.compile(r"^orchestrator-[a-z0-9-]+?-p(?P<pid>\d+)-[a-z0-9_]+$")


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
        match = NAME.match(entry.name)
        if match is None or _alive(int(match["pid"])) or not entry.is_dir() or entry.is_symlink():
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
