"""Notifications: a job's end, failure or preemption, sent where its user already looks (apprise URLs).

The driver, which owns the job's status, calls ``Notifier.status_changed`` at each change it records. What to
send is decided by a pure function (``event_for``); sending goes through apprise (the ``notify`` extra) on a
background thread with a deadline, and a notification that cannot be sent is logged, never raised: a chat
service being down must not fail a training job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.errors import FailureKind
from orchestrator.spec import ENV_URL, NotifyEvent, NotifySpec
from orchestrator.status import JobStatus

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 20.0  # how long the driver waits, at the job's end, for notifications still being sent


def event_for(status: JobStatus, failure: FailureKind | None = None) -> NotifyEvent | None:
    """The event a new status means, if any: a final status, or RECOVERING with the kind of the failure behind it."""
    if status is JobStatus.SUCCEEDED:
        return "succeeded"
    if status is JobStatus.STOPPED:
        return "stopped"
    if status is JobStatus.FAILED:
        return "failed"
    if status is JobStatus.RECOVERING:
        return "preempted" if failure in ("preemption", "notice") else "restarted"
    return None


def resolve_urls(urls: Sequence[str], environ: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """The URLs to send to (``env:NAME`` read from the environment), and a problem for each that cannot be used."""
    env = os.environ if environ is None else environ
    resolved, problems = [], []
    for url in urls:
        if ENV_URL.match(url):
            name = url.removeprefix("env:")
            value = env.get(name, "").strip()
            if value:
                resolved.append(value)
            else:
                problems.append(f"{url}: the environment variable {name} is not set on the driver's machine")
        else:
            resolved.append(url)
    return resolved, problems


@dataclass
class Message:
    event: NotifyEvent
    title: str
    body: str


def message(job: str, event: NotifyEvent, reason: str | None, attempt: int | None) -> Message:
    """What a notification says: the job, what happened, why, and the command to look further."""
    what = {
        "succeeded": "SUCCEEDED",
        "stopped": "is STOPPED (resumable: orchestrator resume " + job + ")",
        "failed": "FAILED",
        "preempted": "lost its workers to a preemption; restarting from its latest backup",
        "restarted": "lost its workers to a failure; restarting from its latest backup",
    }[event]
    where = f" (attempt {attempt})" if attempt else ""
    because = f": {reason}" if reason else ""
    return Message(
        event,
        f"orchestrator: job '{job}' {event}",
        f"job '{job}'{where} {what}{because}\nsee: orchestrator status {job}",
    )


Sender = Callable[[list[str], Message], bool]


def apprise_sender(urls: list[str], note: Message) -> bool:
    """Send through apprise; False when any destination did not take it."""
    import apprise

    notifier = apprise.Apprise()
    for url in urls:
        notifier.add(url)
    return bool(notifier.notify(title=note.title, body=note.body))


class Notifier:
    """Sends a job's events to its destinations; built from the spec's ``notify`` (or the config file's list)."""

    def __init__(
        self,
        job: str,
        spec: NotifySpec,
        fallback_urls: Sequence[str] = (),
        *,
        send: Sender | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        self.job = job
        self.events = set(spec.on)
        self._log = on_log or log.info
        urls, problems = resolve_urls(spec.urls or list(fallback_urls))
        for problem in problems:
            self._log(f"notifications: {problem}; that destination is skipped")
        self._send = send
        if urls and send is None:
            try:
                import apprise  # noqa: F401
            except ImportError:
                self._log("notifications are off: apprise is not installed (pip install 'spot-orchestrator[notify]')")
                urls = []
            else:
                self._send = apprise_sender
        self.urls = urls
        self._threads: list[threading.Thread] = []

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    def status_changed(
        self, status: JobStatus, reason: str | None, *, attempt: int | None = None, failure: FailureKind | None = None
    ) -> None:
        """Send the event ``status`` means, if the job asked for it; returns at once (the send runs aside)."""
        event = event_for(status, failure)
        if not self.enabled or event is None or event not in self.events:
            return
        note = message(self.job, event, reason, attempt)
        thread = threading.Thread(target=self._deliver, args=(note,), name=f"notify-{self.job}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _deliver(self, note: Message) -> None:
        assert self._send is not None
        try:
            sent = self._send(self.urls, note)
        except Exception as exc:  # a notification service's failure is never the job's
            self._log(f"notification '{note.event}' not sent: {type(exc).__name__}: {exc}")
            return
        self._log(
            f"notification '{note.event}' sent"
            if sent
            else f"notification '{note.event}' not sent: a destination refused it or did not answer"
        )

    def flush(self, timeout_s: float = SEND_TIMEOUT_S) -> None:
        """Wait (at most ``timeout_s`` in all) for notifications still being sent: the driver may exit next."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        late = [t for t in self._threads if t.is_alive()]
        if late:
            self._log(f"notifications: {len(late)} still being sent after {timeout_s:.0f} s; not waiting longer")
