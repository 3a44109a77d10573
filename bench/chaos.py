"""The preemption schedule: one worker signalled every T seconds of training, the same way for both contenders.

The ``Preempter`` thread watches a run's step files (``bench.instrument``): the processes writing them are the
current worker group, and their file names give their ranks and pids. Once the group has trained for
``every_s`` seconds (from its first step), one worker (ranks taken in turn from ``ranks``) is signalled:

* ``kill``: SIGKILL, no notice (a spot VM gone at once);
* ``notice``: SIGTERM, then SIGKILL after ``deadline_s`` if the process is still there (a spot VM reclaimed at
  the end of its notice period; Kubernetes sends SIGTERM to the pod first).

No signal is sent in the last ``spare_steps`` steps of the job (a kill during the final save measures the
save, not training), no notice when less training than the notice period is left (the VM would go after
the job's end), and nothing before ``ready()`` (e.g. the first backup exists). ``every_s`` may be left to the
thread: it is then set once, from the first epoch it sees, to the job's expected training time divided by
``per_job`` (so that a job sees about that many preemptions), and shared with every later run through the
``Calibration`` object: both contenders are preempted on the same clock.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.timeline import FILE_PATTERN
from orchestrator.lifecycle import process_alive

POLL_S = 0.05


@dataclass
class Calibration:
    """The schedule's period T, fixed by the first run that measures an epoch, then reused by every run."""

    every_s: float | None = None
    per_job: float = 4.5
    epochs: int = 10


@dataclass
class Preemption:
    """One signal sent: when, to which rank and pid, how, and what became of the process."""

    at: float
    rank: int
    pid: int
    kind: str
    gone_at: float | None = None
    forced: bool = False  # SIGKILLed at the end of its notice period


@dataclass
class _Watched:
    rank: int
    pid: int
    offset: int = 0
    first_start: float | None = None
    first_end: float | None = None
    first_index: int = 0
    last_index: int = -1


@dataclass
class Preempter:
    """Signals workers on schedule while a run trains; start it before the run and ``stop`` it after."""

    steps_dir: Path
    kind: str
    calibration: Calibration
    steps_per_epoch: int
    total_steps: int
    max_count: int
    ranks: list[int]
    deadline_s: float = 30.0
    spare_steps: int = 0
    ready: Callable[[], bool] = lambda: True
    sent: list[Preemption] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ("kill", "notice"):
            raise ValueError(f"Invalid value for `kind`. Received: kind={self.kind!r}. Expected 'kill' or 'notice'.")
        if not self.ranks:
            raise ValueError("Invalid value for `ranks`. Received: ranks=[]. Expected at least one rank.")
        self._stop = threading.Event()
        self._files: dict[Path, _Watched] = {}
        self._spent: set[int] = set()  # pids of groups already signalled
        self._thread = threading.Thread(target=self._run, name="preempter", daemon=True)

    def start(self) -> Preempter:
        self._thread.start()
        return self

    def stop(self) -> list[Preemption]:
        self._stop.set()
        self._thread.join(timeout=self.deadline_s + 5)
        return self.sent

    def _run(self) -> None:
        while not self._stop.wait(POLL_S) and len(self.sent) < self.max_count:
            group = self._current_group()
            if not group:
                continue
            started = min(w.first_start for w in group if w.first_start is not None)
            reached = max(w.last_index for w in group)
            self._calibrate(group)
            every = self.calibration.every_s
            if every is None or time.time() - started < every or reached >= self.total_steps - self.spare_steps:
                continue
            if self.kind == "notice" and self._seconds_left(group) < self.deadline_s:
                continue  # the job ends within the notice period: the VM's loss would not touch its training
            if not self.ready():
                continue
            victim = next((w for w in group if w.rank == self.ranks[len(self.sent) % len(self.ranks)]), group[0])
            self._signal(victim, group)

    def _current_group(self) -> list[_Watched]:
        """The live processes not yet signalled that have trained at least one step."""
        for path in self.steps_dir.glob("rank*-pid*.steps"):
            if path not in self._files:
                match = FILE_PATTERN.search(path.name)
                if match is None:
                    continue
                self._files[path] = _Watched(rank=int(match.group(1)), pid=int(match.group(2)))
            self._read(path, self._files[path])
        return [
            w
            for w in self._files.values()
            if w.first_start is not None and w.pid not in self._spent and process_alive(w.pid)
        ]

    def _read(self, path: Path, watched: _Watched) -> None:
        with path.open("rb") as handle:
            handle.seek(watched.offset)
            chunk = handle.read()
        complete = chunk.rfind(b"\n") + 1
        watched.offset += complete
        for line in chunk[:complete].decode().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "S":
                if watched.first_start is None:
                    watched.first_start, watched.first_end = float(parts[2]), float(parts[3])
                    watched.first_index = int(parts[1])
                watched.last_index = int(parts[1])

    def _seconds_left(self, group: list[_Watched]) -> float:
        """Training time left, at the group's own pace since its first step."""
        chief = next((w for w in group if w.rank == 0), group[0])
        assert chief.first_end is not None
        done = chief.last_index - chief.first_index
        if done < 1:
            return float("inf")
        return (time.time() - chief.first_end) / done * (self.total_steps - 1 - chief.last_index)

    def _calibrate(self, group: list[_Watched]) -> None:
        """T from the first full epoch seen (its first step's trace left out): expected training time / per_job."""
        if self.calibration.every_s is not None:
            return
        chief = next((w for w in group if w.rank == 0), group[0])
        assert chief.first_end is not None
        done = chief.last_index + 1 - chief.first_index
        if done >= self.steps_per_epoch:
            epoch_s = (time.time() - chief.first_end) * self.steps_per_epoch / (done - 1)
            self.calibration.every_s = round(epoch_s * self.calibration.epochs / self.calibration.per_job, 1)

    def _signal(self, victim: _Watched, group: list[_Watched]) -> None:
        record = Preemption(at=time.time(), rank=victim.rank, pid=victim.pid, kind=self.kind)
        self._spent.update(w.pid for w in group)
        self.sent.append(record)
        os.kill(victim.pid, signal.SIGKILL if self.kind == "kill" else signal.SIGTERM)
        threading.Thread(target=self._reap, args=(record,), name="preempter-reap", daemon=True).start()

    def _reap(self, record: Preemption) -> None:
        """Note when the process is gone; at the end of a notice period, SIGKILL it as the VM would go."""
        deadline = record.at + (self.deadline_s if record.kind == "notice" else 60.0)
        while time.time() < deadline:
            if not process_alive(record.pid):
                record.gone_at = time.time()
                return
            time.sleep(POLL_S)
        if record.kind == "notice" and process_alive(record.pid):
            record.forced = True
            os.kill(record.pid, signal.SIGKILL)
            record.gone_at = time.time()
