"""Preemption notices and their deadlines: when to back up, when to back up for the last time, and what then.

A notice (SIGTERM to a worker, a Ray node drain) is acted on at the first control point after it arrives: a
just-in-time backup at once, in case the machine goes sooner than announced. When the notice's deadline is
known (a drain's, from Ray; a SIGTERM's, ``failures.sigterm_grace_s`` after it), the workers then keep training
through the notice period and back up once more when the deadline is nearer than the *lead*: the longest gap
between two control points seen lately, plus twice what the just-in-time backup took, plus two seconds. After that
last backup a SIGTERM'd attempt ends (Ray Train restarts the group from it) and a drained group stops training
and waits for Ray Train, which tears the group down at the drain's deadline and restarts it from that backup.
Either way the restart loses no step, and the notice period was spent training.

Without a known deadline, a SIGTERM'd attempt ends right after the just-in-time backup, and a drained group
keeps training from it (Ray Train ends the attempt at its own default deadline).

Rank 0 runs this (it decides); the outcome travels to every worker in the control decision.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from orchestrator.records import NoticeSource

SAFETY_S = 2.0  # on top of the lead's measured parts (clocks, a slow step)
WAIT_PAST_DEADLINE_S = 60.0  # a drained group still running this long after its deadline gives up waiting
RECENT_GAPS = 64


@dataclass
class Notice:
    source: NoticeSource
    reason: str
    deadline: float | None  # UNIX time when the worker or node goes; None: not known
    final_taken: bool = False

    def describe(self, now: float) -> str:
        if self.deadline is None:
            return self.reason
        return f"{self.reason}, {max(0.0, self.deadline - now):.0f} s before its deadline"


@dataclass(frozen=True)
class NoticeAction:
    """What a control point does about the notices: a backup (``backup`` is its reason), then maybe more."""

    backup: str
    notices: tuple[NoticeSource, ...] = ()  # the notices the backup is for (BackupManifest.notices)
    end: str | None = None  # end the attempt after the backup (a SIGTERM'd worker): why
    wait_until: float | None = None  # stop training after the backup and wait to be torn down, until then (drain)
    notes: tuple[str, ...] = ()


class NoticeClock:
    """Rank 0's record of the notices seen in this attempt, the pace of its control points and its backups."""

    def __init__(self, sigterm_grace_s: float | None) -> None:
        self.sigterm_grace_s = sigterm_grace_s
        self.notices: dict[str, Notice] = {}
        self.backup_s = 0.0  # the longest decided backup (checkpoint and upload, waited for) of this attempt
        self._gaps: deque[float] = deque(maxlen=RECENT_GAPS)
        self._last_point: float | None = None

    # ------------------------------------------------------------------------------------ observations
    def control_point(self, now: float) -> None:
        """A control point at ``now`` (monotonic seconds): the gap since the previous one sets the lead."""
        if self._last_point is not None:
            self._gaps.append(now - self._last_point)
        self._last_point = now

    def fit_started(self) -> None:
        """A ``fit()`` begins: the gap to its first control point holds tracing, not training; leave it out."""
        self._last_point = None

    def backed_up(self, seconds: float) -> None:
        self.backup_s = max(self.backup_s, seconds)

    def lead(self) -> float:
        """Seconds before a deadline at which the last backup must start."""
        return (max(self._gaps) if self._gaps else 0.0) + 2 * self.backup_s + SAFETY_S

    # -------------------------------------------------------------------------------------- decision
    def check(self, now: float, sigterm: str | None, sigterm_at: float | None, drain: Any) -> NoticeAction | None:
        """What this control point (at UNIX time ``now``) does about the notices, or None: nothing.

        ``sigterm``: the SIGTERM notice's message (``sigterm_at``: when it arrived), or None; ``drain``: Ray Train's
        ``PreemptionInfo`` (``deadline_ms``: UNIX milliseconds, or None), or None.
        """
        new: list[Notice] = []
        if sigterm and "sigterm" not in self.notices:
            grace = self.sigterm_grace_s
            at = now if sigterm_at is None else sigterm_at
            new.append(Notice("sigterm", sigterm, None if grace is None else at + grace))
        if drain is not None and "drain" not in self.notices:
            deadline_ms = getattr(drain, "deadline_ms", None)
            reason = f"a node of the group is being drained ({drain})"
            new.append(Notice("drain", reason, None if deadline_ms is None else deadline_ms / 1000))
        for notice in new:
            self.notices[notice.source] = notice
        if new:
            reason = "just-in-time: " + "; ".join(notice.describe(now) for notice in new)
            sources = tuple(notice.source for notice in new)
            unknown_sigterm = next((n for n in new if n.source == "sigterm" and n.deadline is None), None)
            if unknown_sigterm is not None:  # when the worker goes is not known: end now, from this backup
                return NoticeAction(reason, sources, end=unknown_sigterm.reason)
            final = self._final(now, reason, sources)
            if final is not None:  # too close to the deadline for another backup: this one is the last
                return final
            deadlines = [n.deadline for n in new if n.deadline is not None]
            notes = tuple(
                f"training on through the notice period: a last backup about {self.lead():.1f} s before the "
                f"deadline ({deadline - now:.0f} s away)"
                for deadline in deadlines[:1]
            )
            return NoticeAction(reason, sources, notes=notes)
        return self._final(now, None, ())

    def _final(self, now: float, reason: str | None, sources: tuple[NoticeSource, ...]) -> NoticeAction | None:
        pending = [(n.deadline, n) for n in self.notices.values() if n.deadline is not None and not n.final_taken]
        if not pending:
            return None
        deadline, first = min(pending, key=lambda item: item[0])
        if now + self.lead() < deadline:
            return None
        for _, notice in pending:
            notice.final_taken = True
        sources = tuple(dict.fromkeys((*sources, *(notice.source for _, notice in pending))))
        left = deadline - now
        reason = reason or (
            f"last backup before the deadline ({left:.1f} s left, lead {self.lead():.1f} s): {first.reason}"
        )
        if any(n.source == "sigterm" for n in self.notices.values()):
            return NoticeAction(reason, sources, end=self.notices["sigterm"].reason)
        return NoticeAction(reason, sources, wait_until=deadline + WAIT_PAST_DEADLINE_S)
