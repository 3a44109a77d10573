"""Writes a worker's progress, history lines and log text to the store from one background thread.

Training never waits on storage (a GCS put takes tens of milliseconds): callers hand over a record and
return. Progress is coalesced (only the newest is written); history lines and log text are written in order.
``flush()`` waits until everything handed over is stored and re-raises the first write error, so a job never
ends as a success with its history missing.
"""

from __future__ import annotations

import sys
import threading

from orchestrator.errors import OrchestratorError, StoreError
from orchestrator.records import EpochRecord, Progress
from orchestrator.store import JobStore


class StoreWriter:
    def __init__(self, store: JobStore, job: str, *, log_name: str) -> None:
        self._store = store
        self._job = job
        self._log_name = log_name
        self._cond = threading.Condition()
        self._progress: Progress | None = None
        self._history: list[EpochRecord] = []
        self._log: list[str] = []
        self._busy = False
        self._closed = False
        self._error: OrchestratorError | None = None
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def progress(self, progress: Progress) -> None:
        with self._cond:
            self._progress = progress
            self._cond.notify_all()

    def history(self, record: EpochRecord) -> None:
        with self._cond:
            self._history.append(record)
            self._cond.notify_all()

    def log(self, text: str) -> None:
        with self._cond:
            self._log.append(text)
            self._cond.notify_all()

    def flush(self, timeout: float = 120.0) -> None:
        """Block until everything handed over is stored; raise the first error a write hit."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: (not self._pending() and not self._busy) or not self._thread.is_alive(), timeout=timeout
            )
            error = self._error
            if error is None and self._pending() and not self._thread.is_alive():
                error = StoreError(f"store {self._store.url}: the writer for job '{self._job}' stopped")
        if error is not None:
            raise error
        if not done:
            raise StoreError(f"store {self._store.url}: writes for job '{self._job}' did not finish in {timeout:.0f} s")

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join(timeout=10)

    def _pending(self) -> bool:
        return self._progress is not None or bool(self._history) or bool(self._log)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending() or self._closed)
                if self._closed and not self._pending():
                    return
                progress, history, log = self._progress, self._history, self._log
                self._progress, self._history, self._log = None, [], []
                self._busy = True
            try:
                for record in history:
                    self._store.append_history(self._job, record)
                if progress is not None:
                    self._store.write_progress(self._job, progress)
                if log:
                    self._store.append_log(self._job, self._log_name, "".join(log))
            except Exception as exc:  # the thread must survive anything, or later records would vanish silently
                error = (
                    exc
                    if isinstance(exc, OrchestratorError)
                    else StoreError(
                        f"store {self._store.url}: writing job '{self._job}' failed: {type(exc).__name__}: {exc}"
                    )
                )
                print(f"orchestrator: store write failed: {error}", file=sys.stderr)
                with self._cond:
                    self._error = self._error or error
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
