"""Times in a job's logs, for ``logs --since``: a duration back from now or a moment, and each line's time.

The logs' lines start with their time: ``2026-12-07 17:42:17 [driver] ...`` (``driver.log``, written in UTC),
``2026-12-07 17:42:17 [controller] ...`` (``controller.log``, UTC) and ``2026-12-07 17:42:17,123 [rank 0] INFO
...`` (``worker-N.log``: Python logging's ``asctime``, in UTC).
A time without a zone is read as UTC. A line without a time (a traceback's, or a line ``stop`` or ``cancel``
wrote) has the time of the line before it in the same log; before a log's first time, the job's creation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from orchestrator.errors import UsageError

DURATION = re.compile(r"(\d+(?:\.\d+)?)(s|m|h|d)")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_RULE = "a duration such as 30s, 10m, 2h or 1d"
SINCE_RULE = f"{DURATION_RULE} (back from now), or an ISO-8601 time such as 2026-12-07T17:00:00+01:00 (no zone: UTC)"
LINE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:[,.](\d{1,6}))?")


def parse_duration(text: str, option: str, rule: str = DURATION_RULE) -> timedelta:
    """``30s``, ``10m``, ``2h``, ``1d`` (or ``1.5h``) as a timedelta; else a one-line error naming ``option``."""
    match = DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise UsageError(f"{option}: got {text!r}, must be {rule}")
    return timedelta(seconds=float(match.group(1)) * UNIT_SECONDS[match.group(2)])


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a duration back from ``now`` (``10m``), or an ISO-8601 time (a naive one is UTC)."""
    if DURATION.fullmatch(text.strip().lower()):
        return (now or datetime.now(UTC)) - parse_duration(text, "--since", SINCE_RULE)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since: got {text!r}, must be {SINCE_RULE}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def line_time(line: str) -> datetime | None:
    """The time a log line starts with (UTC), or None when it starts with none."""
    match = LINE_TIME.match(line)
    if match is None:
        return None
    day, clock, fraction = match.groups()
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}")
    except ValueError:
        return None
    micro = int((fraction or "0").ljust(6, "0"))
    return moment.replace(microsecond=micro, tzinfo=UTC)


@dataclass
class SinceFilter:
    """Keeps the lines at or after ``since`` (all if None). Remembers each log's last time, so a log read in
    parts (``logs -f``) gives its unstamped lines the time of the line before them, in an earlier part too."""

    since: datetime | None
    start: datetime  # the time of a log's lines before its first stamped one: the job's creation
    last: dict[str, datetime] = field(default_factory=dict)  # by log

    def keep(self, log: str, lines: list[str]) -> list[str]:
        kept = []
        for line in lines:
            moment = line_time(line)
            if moment is not None:
                self.last[log] = moment
            if self.since is None or self.last.get(log, self.start) >= self.since:
                kept.append(line)
        return kept

    def text(self, log: str, text: str) -> str:
        """The kept lines of ``text`` (whole lines, each ending with a newline as in the log)."""
        lines = text.splitlines(keepends=True)
        return "".join(self.keep(log, lines)) if self.since is not None else text
