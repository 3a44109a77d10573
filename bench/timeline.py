"""Reading a run's step files (``bench.instrument``) and computing what both contenders are judged on.

One rule for both: a global step counts toward the final model when it is the **last** execution of that step
index (a restore to step ``p`` discards every earlier execution of steps ``p`` and later, and each later
attempt trains them again). Goodput is the time spent in counted steps over the wall time from the first step
to the last; the time before the first step (start-up) and after the last (saving the model) is outside both.
"""

from __future__ import annotations

import itertools
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

FILE_PATTERN = re.compile(r"rank(\d+)-pid(\d+)\.steps$")


@dataclass
class Process:
    """One worker process's records: its rank, pid, named events and steps (index, start, end)."""

    rank: int
    pid: int
    events: dict[str, list[float]] = field(default_factory=dict)
    steps: list[tuple[int, float, float]] = field(default_factory=list)

    def event(self, name: str) -> float | None:
        """The first time ``name`` was recorded, if it was."""
        times = self.events.get(name)
        return times[0] if times else None

    @property
    def first_seen(self) -> float:
        starts = [times[0] for times in self.events.values()] + [step[1] for step in self.steps[:1]]
        return min(starts, default=float("inf"))


def read_processes(folder: Path) -> list[Process]:
    """Every process's records in ``folder``, in the order they started; a torn last line is ignored."""
    processes = []
    for path in sorted(folder.glob("rank*-pid*.steps")):
        match = FILE_PATTERN.search(path.name)
        if match is None:
            continue
        process = Process(rank=int(match.group(1)), pid=int(match.group(2)))
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "E":
                process.events.setdefault(parts[1], []).append(float(parts[2]))
            elif len(parts) == 4 and parts[0] == "S":
                process.steps.append((int(parts[1]), float(parts[2]), float(parts[3])))
        processes.append(process)
    return sorted(processes, key=lambda p: p.first_seen)


@dataclass
class Timeline:
    """The rank-0 processes of a run (one per attempt), oldest first; rank 0 steps in lockstep with the rest."""

    attempts: list[Process]
    steps_per_epoch: int
    global_batch: int

    @classmethod
    def read(cls, folder: Path, *, steps_per_epoch: int, global_batch: int) -> Timeline:
        chiefs = [p for p in read_processes(folder) if p.rank == 0 and p.steps]
        if not chiefs:
            raise ValueError(f"no training step was recorded in {folder}")
        return cls(chiefs, steps_per_epoch, global_batch)

    def counted(self) -> dict[int, tuple[float, float]]:
        """Step index -> (start, end) of its last execution: the steps the final model descends from."""
        last: dict[int, tuple[float, float]] = {}
        for attempt in self.attempts:
            for index, start, end in attempt.steps:
                if index not in last or start > last[index][0]:
                    last[index] = (start, end)
        return last

    @property
    def total_steps(self) -> int:
        return max(self.counted()) + 1

    def goodput(self) -> float:
        """Seconds in counted steps / seconds from the first step's start to the last counted step's end."""
        counted = self.counted()
        first = min(step[1] for attempt in self.attempts for step in attempt.steps)
        wall = max(end for _, end in counted.values()) - first
        return sum(end - start for start, end in counted.values()) / wall

    def _steady_steps(self) -> list[tuple[int, float, float]]:
        """An uninterrupted run's steps from the second epoch on: the first carries tracing and warm-up (and, for
        a baseline variant trained first in its process, the process's own warm-up)."""
        steps = self.attempts[0].steps
        if len(steps) <= self.steps_per_epoch:
            raise ValueError(f"an uninterrupted run needs more than one epoch of steps, got {len(steps)}")
        return steps[self.steps_per_epoch :]

    def training_seconds(self) -> float:
        """From the first step of the second epoch to the end of the last step: training time with its backups,
        callbacks and epoch boundaries (the last epoch's backup comes after the last step in both contenders)."""
        steps = self._steady_steps()
        return steps[-1][2] - steps[0][1]

    def samples_per_second(self) -> float:
        return len(self._steady_steps()) * self.global_batch / self.training_seconds()

    def epoch_seconds(self) -> float:
        return self.training_seconds() / len(self._steady_steps()) * self.steps_per_epoch

    def step_gap_ms(self) -> float:
        """Median time between one step's end and the next one's start inside an epoch: the per-step Python
        work of callbacks and the loop (epoch boundaries excluded)."""
        steps = self.attempts[0].steps
        gaps = [b[1] - a[2] for a, b in itertools.pairwise(steps) if b[0] % self.steps_per_epoch]
        return 1000 * statistics.median(gaps)

    def after(self, moment: float) -> Process | None:
        """The first attempt whose first step started after ``moment`` (the one that resumed after a kill)."""
        return next((a for a in self.attempts if a.steps[0][1] > moment), None)

    def before(self, moment: float) -> Process | None:
        """The attempt that was training at ``moment``."""
        running = [a for a in self.attempts if a.steps[0][1] <= moment]
        return running[-1] if running else None

    def lost_steps(self, moment: float) -> int | None:
        """Steps the attempt running at ``moment`` had finished that the next attempt trained again."""
        killed, resumed = self.before(moment), self.after(moment)
        if killed is None or resumed is None:
            return None
        return max(0, killed.steps[-1][0] + 1 - resumed.steps[0][0])
