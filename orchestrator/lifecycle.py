"""Who changes a job's status, and how another process knows that the job's driver is gone.

One owner: the *driving process* (``run``, ``resume``, or ``run --or-resume`` as a submitted job's entrypoint:
its runner and its driver) owns ``status.json`` while the status is active (PENDING, RUNNING, RECOVERING,
STOPPING). It holds a :class:`DriverLease` for as long as it drives: ``driver.json`` names its host and pid,
is rewritten every ``HEARTBEAT_S`` and marked ended when it lets go. Once it records a final status (STOPPED,
SUCCEEDED, FAILED) it owns nothing more: a later ``resume`` may take the job.

Every other process asks: ``stop`` and ``cancel`` write a stop command (``commands/``), which the job's
workers apply. They write a status themselves (:func:`end_for_gone_driver`) only when the driver is *known to
be gone* (:func:`driver_gone`), which is when one of these holds:

* its ``driver.json`` says it ended without recording a final status;
* it ran on this host and its pid is no longer alive;
* its heartbeat is older than ``GONE_AFTER_S`` (six heartbeats: a driver that lives writes one every
  ``HEARTBEAT_S``, whatever it is doing, from a thread of its own; clocks are assumed to agree within a few
  seconds, as NTP keeps them);
* for ``cancel``: the Ray Jobs API reports the Ray job whose entrypoint it was (``ray_submission``) as ended:
  Ray marks a stopped job ended only once its entrypoint's process has exited.

A job with an active status and no ``driver.json`` (recorded by an older version) has no known driver: only
``cancel``'s Ray job rule applies to it. Every status change, by whichever process, goes through
``JobStore.set_status`` (the transition table of ``status.py``, the reason recorded with it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.records import DriverRecord, JobState, utc_now
from orchestrator.status import JobStatus
from orchestrator.store import JobStore

HEARTBEAT_S = 10.0
GONE_AFTER_S = 60.0
FOLLOWER_GRACE_S = 20.0  # GoneWatch: a takeover leases the job well within this
SUBMISSION_ENV = "ORCHESTRATOR_RAY_SUBMISSION"  # set by `submit` in the entrypoint's environment


def this_host() -> str:
    return socket.gethostname()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, answers signal 0 but does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def describe(record: DriverRecord) -> str:
    return f"pid {record.pid} on {record.host} ({record.command})"


def driver_gone(record: DriverRecord | None, *, now: datetime | None = None) -> str | None:
    """How the driver in ``record`` is known to be gone (``pid 12 on host-a (run) no longer runs``), or ``None``:
    it lives, or nothing is known (no record)."""
    if record is None:
        return None
    who = describe(record)
    if record.ended_at is not None:
        return f"{who} ended at {record.ended_at:%Y-%m-%d %H:%M:%S} UTC without recording an end"
    if record.host == this_host() and not process_alive(record.pid):
        return f"{who} no longer runs"
    age = ((now or utc_now()) - record.heartbeat_at).total_seconds()
    if age > GONE_AFTER_S:
        return f"{who} last reported {age:.0f} s ago (it reports every {HEARTBEAT_S:.0f} s)"
    return None


def end_for_gone_driver(store: JobStore, job: str, status: JobStatus, reason: str, **changes: object) -> JobState:
    """Record ``status`` (STOPPED or FAILED) for a job whose driver is known to be gone (the caller checked, and
    ``reason`` says how it knows); a running job stops through STOPPING, as its driver would have."""
    current = store.read_state(job).status
    if status is JobStatus.STOPPED and current in (JobStatus.RUNNING, JobStatus.RECOVERING):
        store.set_status(job, JobStatus.STOPPING, reason)
    return store.set_status(job, status, reason, ended_at=utc_now(), **changes)


def wait_until_gone(store: JobStore, job: str, *, timeout_s: float | None = None) -> str | None:
    """For a takeover (``run --or-resume`` found an active job): wait until its previous driver is known to be
    gone and say how it is known, or ``None`` when no driver of this version drove it (nothing to wait for).

    Raises:
        UsageError: the driver still reports after ``timeout_s`` (default: ``GONE_AFTER_S`` and a heartbeat more):
            a live driver owns the job.
    """
    deadline = time.monotonic() + (GONE_AFTER_S + HEARTBEAT_S if timeout_s is None else timeout_s)
    while True:
        record = store.read_driver(job)
        if record is None or (record.host == this_host() and record.pid == os.getpid()):
            return None
        why = driver_gone(record)
        if why is not None:
            return why
        if time.monotonic() >= deadline:
            raise UsageError(
                f"job '{job}' is driven by {describe(record)}, which reported "
                f"{(utc_now() - record.heartbeat_at).total_seconds():.0f} s ago: it is not taken over",
                hint=f"stop it first (orchestrator stop {job}), or see: orchestrator status {job}",
            )
        time.sleep(min(1.0, HEARTBEAT_S))


class GoneWatch:
    """For a follower (``watch``, ``submit --follow``, ``logs -f``): the reason the job's driver is gone, once it
    has been known gone for ``grace_s`` while the job's status stayed active (nothing recorded an end). The
    grace (default ``FOLLOWER_GRACE_S``) covers a takeover: ``run --or-resume`` or ``resume`` leases the job
    within seconds of the old driver's end. ``driver.json`` is read at most every ``every_s`` (default: half a
    heartbeat)."""

    def __init__(
        self,
        store: JobStore,
        job: str,
        *,
        grace_s: float | None = None,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.job, self.clock = store, job, clock
        self.grace_s = FOLLOWER_GRACE_S if grace_s is None else grace_s
        self.every_s = HEARTBEAT_S / 2 if every_s is None else every_s
        self.gone_since: float | None = None
        self.checked_at: float | None = None
        self.reason: str | None = None

    def check(self, status: JobStatus) -> str | None:
        """Why the follower should stop waiting for ``status`` to end, or ``None``: keep following."""
        now = self.clock()
        if not status.is_active():
            self.gone_since = self.reason = None
            return None
        if self.checked_at is not None and now - self.checked_at < self.every_s:
            return self.reason
        self.checked_at = now
        why = driver_gone(self.store.read_driver(self.job))
        if why is None:
            self.gone_since = self.reason = None
            return None
        self.gone_since = now if self.gone_since is None else self.gone_since
        self.reason = why if now - self.gone_since >= self.grace_s else None
        return self.reason


class DriverLease:
    """This process drives ``job``: ``driver.json`` says so from ``__enter__`` (refreshed every ``HEARTBEAT_S`` by a
    thread of its own) until ``__exit__`` marks it ended. Re-entered in the same process (a takeover that then
    resumes), it is one lease."""

    _held: ClassVar[dict[tuple[str, str], DriverLease]] = {}
    _held_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, store: JobStore, job: str, command: str) -> None:
        self.store, self.job, self.command = store, job, command
        self._nested = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.record: DriverRecord | None = None

    def __enter__(self) -> DriverLease:
        key = (self.store.url, self.job)
        with DriverLease._held_lock:
            held = DriverLease._held.get(key)
            if held is not None:  # this process drives the job already: the outer lease stands
                self._nested = True
                return held
            DriverLease._held[key] = self
        try:
            submission = os.environ.get(SUBMISSION_ENV) or None
            self.record = DriverRecord(
                host=this_host(), pid=os.getpid(), command=self.command, ray_submission=submission
            )
            self.store.write_driver(self.job, self.record)
        except BaseException:
            with DriverLease._held_lock:
                DriverLease._held.pop(key, None)
            raise
        self._thread = threading.Thread(target=self._beat, name=f"driver-heartbeat-{self.job}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._nested:
            return
        with DriverLease._held_lock:
            DriverLease._held.pop((self.store.url, self.job), None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.record is not None:
            with contextlib.suppress(OrchestratorError):  # else it is known gone GONE_AFTER_S later
                self.store.write_driver(self.job, self.record.model_copy(update={"ended_at": utc_now()}))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            assert self.record is not None
            self.record = self.record.model_copy(update={"heartbeat_at": utc_now()})
            try:
                self.store.write_driver(self.job, self.record)
            except OrchestratorError:
                continue  # the store may be briefly unreachable: the next beat tries again
