"""How often to back up inside epochs when the user has not said: by time, from what the job has measured.

A backup costs training time while it blocks (``C``: the checkpoint write, and any upload still running);
a preemption without notice loses the work since the last backup (on average half the interval). Young's
first-order optimum for the interval between checkpoints is ``sqrt(2 * C * M)``, with ``M`` the mean time
between failures (J. W. Young, 1974; Daly, 2006, refines it by terms that matter only when ``C`` approaches
``M``; CheckFreq, FAST 2021, applies the same rule to deep-learning jobs). Here:

* ``C`` is the median blocking time of this attempt's recent backups (before any, a typical small-model cost);
* ``M`` is the job's training time so far over the preemptions and failures it has seen; before the first one,
  a prior of an hour (spot VMs are typically reclaimed hours apart; a job that is preempted more often learns it
  at its first restart);
* the interval never makes backups cost more than ``max_overhead`` of training time (``C / max_overhead``), never
  starts a backup while the last one may still be uploading, and is at least ``MIN_S``.

Pure: measurements in, an interval out. ``orchestrator.worker.control`` asks it at every control point.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

PRIOR_MTBF_S = 3600.0
DEFAULT_BLOCKING_S = 0.05  # before the attempt's first backup: a small model's checkpoint write here
MIN_S = 2.0
MAX_S = 3600.0
RECENT = 5  # backups whose blocking time counts


def young_interval(blocking_s: float, mtbf_s: float) -> float:
    """Young's optimal checkpoint interval for a checkpoint cost and a mean time between failures (seconds)."""
    return math.sqrt(2.0 * max(blocking_s, 0.0) * max(mtbf_s, 0.0))


@dataclass
class BackupInterval:
    """The adaptive interval: feed it each backup's cost and the job's failure history; ask it when one is due.

    Example::

        interval = BackupInterval(max_overhead=0.01, trained_s=0.0, failures=0)
        interval.backed_up(blocking_s=0.04, upload_s=0.2, at=now)
        interval.due(now + 30.0)  # -> True once interval.seconds(now + 30.0) have passed since the backup
    """

    max_overhead: float
    trained_s: float = 0.0  # training time of the job before this attempt
    failures: int = 0  # preemptions and failures before this attempt
    fixed_s: float | None = None  # the user's backup.every_seconds: used as it is
    started_at: float = 0.0  # this attempt's start (monotonic seconds)
    last_backup_at: float = 0.0
    last_upload_s: float = 0.0
    blocking: list[float] = field(default_factory=list)

    def observe_job(self, trained_s: float, failures: int) -> None:
        """What the store says about the job before this attempt (read in the background at its start)."""
        self.trained_s, self.failures = max(0.0, trained_s), max(0, failures)

    def backed_up(self, blocking_s: float, upload_s: float, at: float) -> None:
        self.blocking = [*self.blocking[-(RECENT - 1) :], blocking_s]
        self.last_upload_s = upload_s
        self.last_backup_at = at

    def mtbf(self, now: float) -> float:
        if self.failures == 0:
            return max(PRIOR_MTBF_S, self.trained_s + (now - self.started_at))
        return (self.trained_s + (now - self.started_at)) / self.failures

    def seconds(self, now: float) -> float:
        if self.fixed_s is not None:
            return self.fixed_s
        cost = statistics.median(self.blocking) if self.blocking else DEFAULT_BLOCKING_S
        chosen = max(young_interval(cost, self.mtbf(now)), cost / self.max_overhead, self.last_upload_s, MIN_S)
        return min(chosen, MAX_S)

    def due(self, now: float) -> bool:
        return now - self.last_backup_at >= self.seconds(now)

    def describe(self, now: float) -> str:
        if self.fixed_s is not None:
            return f"every {self.fixed_s:g} s (backup.every_seconds)"
        cost = statistics.median(self.blocking) if self.blocking else DEFAULT_BLOCKING_S
        seen = (
            f"{self.failures} restart(s) in {self.trained_s + now - self.started_at:.0f} s"
            if self.failures
            else (f"no restart yet: prior {PRIOR_MTBF_S:.0f} s")
        )
        return (
            f"every {self.seconds(now):.1f} s (auto: backup blocks {cost * 1000:.0f} ms, mean time between "
            f"restarts {self.mtbf(now):.0f} s ({seen}), at most {self.max_overhead:.1%} of training)"
        )
