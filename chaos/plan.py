"""The seeded sequence of faults: the same seed gives the same kinds, in the same order, with the same parameters
(victim rank, delays, learning rates); only when each lands in training depends on the machine's pace."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# A fault kind: what a spot cluster or a person does to a running job.
KINDS = {
    "sigkill": "SIGKILL of a random worker (no notice)",
    "sigterm": "SIGTERM of a random worker (a notice: just-in-time backup)",
    "drain": "the spot node drained with a deadline, its raylet killed at the deadline, a new node started",
    "raylet": "the spot node's raylet killed without notice, a new node started",
    "driver": "the driver process SIGKILLed (head loss), then `orchestrator stop` and `orchestrator resume`",
    "upload": "rank 0 SIGKILLed while a backup's files are uploading (the upload cut off midway)",
    "outage": "the store (GCS emulator) stopped for a few seconds, then restarted with its data",
    "set_lr": "`orchestrator set-lr` (at the next step or the next epoch boundary)",
    "stop": "`orchestrator stop`, then `orchestrator resume` a few seconds later",
}
# The kinds that end the running attempt: each one starts exactly one new attempt.
RESTARTS = frozenset({"sigkill", "sigterm", "drain", "raylet", "driver", "upload", "stop"})
# The kinds Ray Train's restart counts as a preemption (a notice came first); the others are failures or a resume.
PREEMPTIONS = frozenset({"sigterm", "drain"})
# Kinds that restart the worker group cost tens of seconds each; weights keep a long run's time in bounds while
# every kind comes up in 20 faults.
WEIGHTS = {
    "sigkill": 2,
    "sigterm": 1,
    "drain": 1,
    "raylet": 1,
    "driver": 1,
    "upload": 1,
    "outage": 3,
    "set_lr": 4,
    "stop": 1,
}
LEARNING_RATES = (1e-3, 5e-4, 2e-4, 1e-4)


@dataclass
class Fault:
    """One planned fault and, once injected, what happened."""

    index: int
    kind: str
    rank: int = 0  # the victim's rank (sigkill, sigterm)
    delay_s: float = 0.0  # training time before it lands, once the job trains again
    pause_s: float = 0.0  # outage length; stop -> resume gap; drain deadline
    learning_rate: float | None = None
    now: bool = True  # set-lr --now (else at the next epoch boundary)
    injected_at: float | None = None
    position: str = ""  # "epoch E step S (attempt A)" where the job was when it landed
    note: str = ""  # what the injection saw (e.g. "cut a backup upload of e00003-s0000012 midway")
    ended_job: bool = False  # the job ended before the fault could take effect (a stop in the last steps)

    def describe(self) -> str:
        if self.kind in ("sigkill", "sigterm"):
            extra = f"rank {self.rank}"
        elif self.kind == "drain":
            extra = f"deadline {self.pause_s:.0f} s"
        elif self.kind == "outage":
            extra = f"{self.pause_s:.1f} s"
        elif self.kind == "stop":
            extra = f"resumed after {self.pause_s:.1f} s"
        elif self.kind == "set_lr":
            extra = f"{self.learning_rate:g} {'--now' if self.now else 'at the next epoch'}"
        else:
            extra = ""
        return f"#{self.index} {self.kind}" + (f" ({extra})" if extra else "")


@dataclass
class Plan:
    seed: int
    faults: list[Fault] = field(default_factory=list)

    @property
    def restarts(self) -> int:
        return sum(f.kind in RESTARTS for f in self.faults if f.injected_at is not None)

    @property
    def preemptions(self) -> int:
        return sum(f.kind in PREEMPTIONS for f in self.faults if f.injected_at is not None)


def make_plan(seed: int, count: int, kinds: tuple[str, ...] | None = None) -> Plan:
    """``count`` faults drawn from ``kinds`` (all by default) with ``WEIGHTS``; with ``count`` at least the number
    of kinds, each kind comes at least once."""
    unknown = set(kinds or ()) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
    pool = list(kinds or KINDS)
    rng = random.Random(seed)
    chosen = list(pool) if count >= len(pool) else []
    chosen += rng.choices(pool, weights=[WEIGHTS[k] for k in pool], k=count - len(chosen))
    rng.shuffle(chosen)
    faults = []
    for index, kind in enumerate(chosen, start=1):
        fault = Fault(index=index, kind=kind, rank=rng.randrange(2), delay_s=round(rng.uniform(0.3, 2.5), 2))
        if kind == "outage":
            fault.pause_s = round(rng.uniform(2.0, 6.0), 1)
        elif kind == "stop":
            fault.pause_s = round(rng.uniform(0.5, 4.0), 1)
        elif kind == "drain":
            fault.pause_s = float(rng.randrange(6, 12))
        elif kind == "set_lr":
            fault.learning_rate = rng.choice(LEARNING_RATES)
            fault.now = rng.random() < 0.6
        faults.append(fault)
    return Plan(seed=seed, faults=faults)
