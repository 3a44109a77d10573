"""``orchestrator tensorboard JOB...``: TensorBoard over jobs' event files, in a local folder or a cloud store.

Rank 0 of every attempt writes one event file to ``jobs/<job>/tensorboard/`` and uploads it whole as it grows,
so TensorBoard shows one continuous run per job across restarts. TensorBoard reads a local mirror with one
folder per job (so each run is named by its job, and TensorFlow's own ``gs://`` client, which cannot reach
every store this product can, e.g. an emulator or an ``s3://`` endpoint set up for fsspec, is not needed):
every ``sync_every_s`` the mirror fetches only the bytes each event file has grown by since the last copy (an
event file only grows; a shorter one was replaced and is fetched whole).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.errors import JobNotFoundError, OrchestratorError, UsageError
from orchestrator.store import JobStore

log = logging.getLogger(__name__)

FOLDER = "tensorboard"


@dataclass
class Mirror:
    """A local copy of some jobs' event folders on an object store, refreshed by ``sync()``."""

    store: JobStore
    jobs: list[str]
    root: str
    fetched_bytes: int = 0  # every byte copied so far: the test that only new bytes move reads it
    _sizes: dict[str, int] = field(default_factory=dict)

    def folder(self, job: str) -> str:
        return os.path.join(self.root, job)

    def sync(self) -> int:
        """Copy what is new in every job's event folder; the number of bytes copied."""
        copied = 0
        for job in self.jobs:
            os.makedirs(self.folder(job), exist_ok=True)
            for remote, size in self._remote_files(job):
                local = os.path.join(self.folder(job), os.path.basename(remote))
                have = self._sizes.get(local, 0)
                if size == have:
                    continue
                start = have if size > have else 0  # grown: the new bytes only; shorter: replaced, fetch it whole
                data: bytes = self.store.fs.cat_file(remote, start=start)
                with open(local, "ab" if start else "wb") as out:
                    out.write(data)
                self._sizes[local] = start + len(data)
                copied += len(data)
        self.fetched_bytes += copied
        return copied

    def _remote_files(self, job: str) -> list[tuple[str, int]]:
        try:
            entries = self.store.fs.ls(self.store.path(job, FOLDER), detail=True, refresh=True)
        except FileNotFoundError:
            return []
        return [(str(e["name"]), int(e.get("size") or 0)) for e in entries if e.get("type") == "file"]


def event_folders(store: JobStore, jobs: Iterable[str]) -> dict[str, str]:
    """Each job's event folder (a store path), in the order given.

    Raises:
        JobNotFoundError: a job is not in the store.
        UsageError: a job has written no event file yet (``monitoring.tensorboard: false``, or not started).
    """
    names = set(store.job_names())
    folders: dict[str, str] = {}
    for job in dict.fromkeys(jobs):
        if job not in names:
            raise JobNotFoundError(f"no job named '{job}' in store {store.url}", hint="see: orchestrator list")
        folder = store.path(job, FOLDER)
        if not store.fs.exists(folder):
            raise UsageError(
                f"job '{job}' has no TensorBoard files in store {store.url} (it has not trained an epoch yet, or its "
                "spec sets monitoring.tensorboard: false)",
                hint="plot it instead: orchestrator plot " + job,
            )
        folders[job] = folder
    return folders


def tensorboard_command(logdir: str, host: str, port: int, reload_s: int = 5) -> list[str]:
    """The TensorBoard server's command line (the ``tensorboard`` package TensorFlow installs); each folder in
    ``logdir`` is one run."""
    return [
        *(sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--reload_interval", str(reload_s)),
        *("--host", host, "--port", str(port)),
    ]


def check_installed() -> None:
    """Raise a one-line error when the ``tensorboard`` package is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError("TensorBoard is not installed here", hint="pip install tensorboard")


@dataclass
class Board:
    """A running TensorBoard over some jobs, and the mirror that feeds it."""

    process: subprocess.Popen[bytes]
    url: str
    mirror: Mirror

    def poll(self, sync_every_s: float, stop: threading.Event) -> int:
        """Keep the mirror fresh until TensorBoard exits or ``stop`` is set; TensorBoard's exit code (0 if stopped)."""
        while not stop.wait(sync_every_s):
            code = self.process.poll()
            if code is not None:
                return code
            try:
                self.mirror.sync()
            except (OrchestratorError, OSError) as exc:  # a store briefly unreachable: the next round tries again
                log.warning("TensorBoard mirror: %s", getattr(exc, "message", exc))
        return 0

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.mirror.root, ignore_errors=True)


def start(store: JobStore, jobs: list[str], *, host: str = "localhost", port: int = 6006, reload_s: int = 5) -> Board:
    """Start TensorBoard over a local mirror of the jobs' event files, one run per job."""
    check_installed()
    if not 0 < port < 65536:
        raise UsageError(f"--port: got {port}, must be between 1 and 65535")
    folders = event_folders(store, jobs)
    mirror = Mirror(store, list(folders), tempfile.mkdtemp(prefix="orchestrator-tensorboard-"))
    mirror.sync()
    process = subprocess.Popen(tensorboard_command(mirror.root, host, port, reload_s), stdin=subprocess.DEVNULL)
    return Board(process, f"http://{host}:{port}/", mirror)


def wait_until_serving(board: Board, timeout_s: float = 60.0) -> None:
    """Wait until TensorBoard answers on its port (or raise, with its exit code if it ended)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = board.process.poll()
        if code is not None:
            raise UsageError(f"TensorBoard exited with code {code} before serving {board.url}")
        try:
            with urllib.request.urlopen(board.url + "data/runs", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise UsageError(f"TensorBoard did not answer at {board.url} within {timeout_s:.0f} s")
