"""What a job cost: the accounting's hours (``recovery``) priced at the spec's (or the config file's) prices.

A pure function of the store's records (docs/watching.md, "Cost"). The unit priced is one GPU for a job with
``scaling.gpus_per_worker``, else one worker; each attempt's units are its own workers' (an elastic job runs
some attempts on fewer):

* held: each attempt's held seconds (``recovery.held_seconds``: from its start to its last epoch's end, its
  failure, or for the last one the job's end or now) x its units, plus each restart's time to resume (from a
  failure to the next attempt's start, after its restore) x the next attempt's units. ``cost`` is held x the spot
  price, ``on_demand_cost`` held x the on-demand price.
* useful: the seconds of the epochs the final model descends from, each x the units of the attempt that trained
  it: ``uninterrupted_cost`` is useful x the on-demand price, what the same training would have cost on demand
  with no restart at all.
* interruptions: the restarts' time to resume, plus the lost steps (``recovery.lost_steps_by_attempt``) x the
  seconds a step took in the attempt that trained them (its epochs' seconds over their steps; else the job's):
  ``interruption_cost`` is both x the spot price. Lost work is ``None`` where the lost steps are not known.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from pydantic import Field

from orchestrator.records import (
    AttemptRecord,
    BackupRecord,
    BranchRecord,
    EpochRecord,
    FailureRecord,
    Progress,
    utc_now,
)
from orchestrator.recovery import held_seconds, lost_steps_by_attempt, split_epoch_seconds, time_to_resume
from orchestrator.spec import CostSpec, ScalingSpec, StrictModel

DEFAULT_CURRENCY = "$"


class CostSummary(StrictModel):
    """What a job cost so far (``status``, ``compare``; ``cost`` in their ``--json``). Hours are unit-hours:
    GPU-hours, or worker-hours for a CPU-only job; an amount is ``None`` where its price is not configured."""

    currency: str
    unit: Literal["GPU", "worker"]
    spot_per_hour: float | None
    on_demand_per_hour: float | None
    held_hours: float = Field(description="unit-hours the workers were held: each attempt, and each restart")
    useful_hours: float = Field(description="unit-hours of the epochs the final model descends from")
    restart_hours: float = Field(description="unit-hours from each failure to the next attempt's start")
    lost_work_hours: float | None = Field(description="unit-hours of steps trained, then lost (None: not known)")
    cost: float | None = Field(description="held x spot price: what the job cost so far")
    on_demand_cost: float | None = Field(description="held x on-demand price: the same hours on demand")
    uninterrupted_cost: float | None = Field(description="useful x on-demand price: on demand, with no restart")
    interruption_cost: float | None = Field(description="(restart + lost work) x spot price: what restarts cost")


def units(attempt: AttemptRecord | None, scaling: ScalingSpec) -> int:
    """The priced units of an attempt: its workers (as recorded, else from its replicas, else the spec's)
    times the GPUs of each, for a GPU job."""
    workers = scaling.workers
    if attempt is not None and attempt.workers:
        workers = len(attempt.workers)
    elif attempt is not None and attempt.replicas:
        workers = max(1, attempt.replicas // scaling.devices_per_worker)
    return workers * (scaling.gpus_per_worker or 1)


def job_cost(
    prices: CostSpec | None,
    scaling: ScalingSpec,
    attempts: list[AttemptRecord],
    failures: list[FailureRecord],
    history: list[EpochRecord],
    history_lines: list[EpochRecord],
    *,
    ended_at: datetime | None,
    backups: list[BackupRecord] | None = None,
    branches: list[BranchRecord] | None = None,
    progress: Progress | None = None,
    ended_without_backup: Progress | None = None,
    now: datetime | None = None,
) -> CostSummary | None:
    """The job's cost so far (rules: the module's docstring); ``None`` when no price is configured."""
    if prices is None or (prices.spot_per_hour is None and prices.on_demand_per_hour is None):
        return None
    by_number = {attempt.attempt: attempt for attempt in attempts}

    def units_of(attempt: int) -> int:
        return units(by_number.get(attempt), scaling)

    held = held_seconds(attempts, failures, history_lines, ended_at or now or utc_now())
    held_units = sum(seconds * units_of(attempt) for attempt, seconds in held.items())
    restart_units = sum(gap * units_of(attempt) for attempt, gap in time_to_resume(failures, attempts).items())
    useful_units = sum(_finite(r.seconds) * units_of(r.attempt) for r in history)
    for attempt in attempts:  # the part of a split epoch before its restore point, in the attempt that wrote it
        written = [b for b in backups or [] if b.attempt == attempt.attempt]
        useful_units += split_epoch_seconds(attempts, history_lines, written) * units_of(attempt.attempt)
    lost = lost_steps_by_attempt(
        attempts, failures, backups or [], branches=branches, ended_without_backup=ended_without_backup
    )
    per_epoch = _steps_per_epoch(failures, attempts, progress)
    lost_units = None if lost is None else _lost_units(lost, history_lines, per_epoch, units_of)
    hours = 3600.0
    spot, on_demand = prices.spot_per_hour, prices.on_demand_per_hour
    held_h, useful_h, restart_h = (held_units + restart_units) / hours, useful_units / hours, restart_units / hours
    lost_h = None if lost_units is None else lost_units / hours
    return CostSummary(
        currency=prices.currency or DEFAULT_CURRENCY,
        unit="GPU" if scaling.gpus_per_worker else "worker",
        spot_per_hour=spot,
        on_demand_per_hour=on_demand,
        held_hours=_round(held_h),
        useful_hours=_round(useful_h),
        restart_hours=_round(restart_h),
        lost_work_hours=None if lost_h is None else _round(lost_h),
        cost=None if spot is None else _round(held_h * spot),
        on_demand_cost=None if on_demand is None else _round(held_h * on_demand),
        uninterrupted_cost=None if on_demand is None else _round(useful_h * on_demand),
        interruption_cost=None if spot is None else _round((restart_h + (lost_h or 0.0)) * spot),
    )


def _finite(value: float) -> float:
    """A NaN or infinite record (a hand-edited or damaged one) counts as nothing, not as a NaN total."""
    return value if math.isfinite(value) else 0.0


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def _lost_units(
    lost: dict[int, int], history_lines: list[EpochRecord], per_epoch: int | None, units_of: Callable[[int], int]
) -> float | None:
    """Unit-seconds of the steps lost per attempt; ``None`` when steps were lost but no epoch says how long a step
    takes."""
    total = 0.0
    for number, steps in lost.items():
        seconds = _step_seconds(number, history_lines, per_epoch) if steps else 0.0
        if seconds is None:
            return None
        total += steps * seconds * units_of(number)
    return total


def _steps_per_epoch(
    failures: list[FailureRecord], attempts: list[AttemptRecord], progress: Progress | None
) -> int | None:
    """Steps in an epoch, from whichever record says: a failure's, an attempt's previous position, progress."""
    known = [f.steps_per_epoch for f in failures if f.steps_per_epoch]
    known += [a.previous_reached.steps_per_epoch for a in attempts if a.previous_reached is not None]
    known += [progress.steps_per_epoch] if progress is not None else []
    return known[-1] if known else None


def _step_seconds(attempt: int, history_lines: list[EpochRecord], steps_per_epoch: int | None) -> float | None:
    """Seconds a step took in ``attempt`` (its epochs' seconds over their steps), else in the whole job; ``None``
    where no epoch ended or the steps in one are not known."""
    if not steps_per_epoch:
        return None
    for lines in ([r for r in history_lines if r.attempt == attempt], history_lines):
        timed = [r for r in lines if math.isfinite(r.seconds) and r.first_step < steps_per_epoch]
        steps = sum(steps_per_epoch - r.first_step for r in timed)
        if steps:
            return sum(r.seconds for r in timed) / steps
    return None
