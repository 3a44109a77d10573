"""What the workers do at a control point, as a function of what rank 0 knows there: ``decide(...) -> Decision``.

No Ray, no TensorFlow (tests/unit/test_layering.py holds it to that): the worker's ``TrainingControl`` callback
(``orchestrator.worker.control``) gathers the inputs on rank 0 (the commands its poller read, the preemption
notices, the clock, the epoch's metrics), agrees on the decision with the other workers, and applies it on
every worker alike. tests/unit/test_control_policy.py steps this module one control point at a time.

The rules at one control point, in order (a later one may override an earlier one):

1. at an epoch's end: ReduceLROnPlateau, EarlyStopping and the best model (``lr_plan.after_epoch``); an early
   stop backs up first (unless it is the last epoch anyway);
2. at an epoch's start (step 0): the planned LR drop, or a note that a manual LR skipped it;
3. the commands due at this point (``lr_plan.due_commands``): ``set-lr`` changes the LR, ``stop`` backs up and
   halts; every command's first effect is acknowledged, a replay (a restore from an older backup) is not;
4. the preemption notices (``orchestrator.worker.notice``): a just-in-time backup, the last one before a known
   deadline, and then the attempt's end (SIGTERM) or a pause until the group is torn down (a drain); an elastic
   job's growth (``orchestrator.elastic``): a backup, then a pause until the controller restarts the group;
5. the loss: NaN or infinite for ``callbacks.terminate_on_nan.patience_steps`` steps halts without a backup,
   voiding the backups, ends and pause of 1-4;
6. inside an epoch, when nothing above backs up or halts: a backup by the time-based interval
   (``orchestrator.backup_interval``), not waited for;
7. how many batch calls until the next control point (about ``control.interval_s``, exactly at a replay).

At an epoch's end that does not end the fit, the next epoch's start is decided too (``Decision.then``, without
notices): one agreement serves both.

The state that outlives a control point is the controller's ``ControlState`` (in every backup; passed in, the
new one returned in the decision) and rank 0's ``Memory`` of the attempt: the notices seen, the backup
interval's measurements, the NaN watch. ``Memory`` is plain Python, updated by ``decide`` as it observes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from orchestrator import lr_plan
from orchestrator.backup_interval import BackupInterval
from orchestrator.lr_plan import Due, LRChange, Point
from orchestrator.records import BranchRecord, Command, CommandAck, ControlState, Ending, NoticeSource
from orchestrator.spec import JobSpec
from orchestrator.worker.notice import NoticeAction, NoticeClock

FIRST_CHECK_CALLS = 8
MAX_CHECK_CALLS = 100_000
Boundary = Literal["epoch_begin", "step", "epoch_end"]


@dataclass(frozen=True)
class Decision:
    """What every worker does at one control point (decided on rank 0, travels pickled to the others)."""

    state: ControlState  # the controller's state after this point
    lr: LRChange | None = None
    acks: tuple[CommandAck, ...] = ()  # commands whose first effect this is
    backup: str | None = None  # reason for a backup at this point
    backup_notices: tuple[NoticeSource, ...] = ()  # the preemption notices the backup is (also) for
    scheduled: bool = False  # a backup by the time-based interval (``backup_interval``): not waited for
    halt: Ending | None = None
    preempted: str | None = None  # end the attempt with an error after the backup (a worker got SIGTERM)
    wait_until: float | None = None  # after the backup, stop training until Ray Train ends the attempt (a drain)
    resize: str | None = None  # after the backup, pause: the controller restarts the group at another size (why)
    early_stop: str | None = None
    best_improved: bool = False
    next_check: int = FIRST_CHECK_CALLS
    messages: tuple[str, ...] = ()  # logged by rank 0, in this order, before the LR change
    then: Decision | None = None  # at an epoch's end: the next epoch's start decision, applied when it begins

    @property
    def ends(self) -> bool:
        """Whether this point ends the fit (so there is no next epoch to decide the start of)."""
        return bool(self.halt is not None or self.early_stop or self.preempted or self.wait_until or self.resize)


@dataclass(frozen=True)
class Fit:
    """What stays the same through one ``fit()``."""

    spec: JobSpec
    job: str
    attempt: int
    steps_per_epoch: int
    end_epoch: int  # this fit's last epoch (exclusive)


@dataclass(frozen=True)
class At:
    """The control point: where, with which metrics, and the pace of the batch calls since the last one."""

    boundary: Boundary
    point: Point
    metrics: dict[str, float] | None = None  # an epoch's logs at its end; rank 0's running loss inside it
    first_step: int = 0  # where this fit's first epoch started (a resumed partial epoch)
    calls: int = 0  # the callback's batch-call counter when it decides
    elapsed_s: float = 0.0  # monotonic seconds since the last control point was applied


@dataclass(frozen=True)
class Inbox:
    """The job's commands, their acknowledgements and branches, as rank 0's poller last read them."""

    commands: list[Command]
    acks: dict[int, CommandAck]
    branches: list[BranchRecord]


@dataclass(frozen=True)
class Notices:
    """What the preemption watchers say at this point."""

    sigterm: str | None = None  # the SIGTERM notice's message (TensorFlow's coordination service), or None
    sigterm_at: float | None = None  # UNIX time it arrived
    drain: Any = None  # Ray Train's ``PreemptionInfo`` for a node drain (``deadline_ms``), or None
    resize: str | None = None  # an elastic job's controller asks to grow the group (why), or None


@dataclass(frozen=True)
class Clock:
    wall: float  # time.time(): notice deadlines are UNIX times
    monotonic: float  # time.monotonic(): the control points' pace and the backup interval


@dataclass
class NanWatch:
    """Rank 0's count of the steps in a row whose training loss was NaN or infinite (Keras' TerminateOnNaN).

    The loss is read at control points only (reading it costs a step's pipelining); it is the epoch's running
    mean, so it stays NaN from the first diverged step to the epoch's end. Once one is seen, ``watching`` asks
    for a control point at every step until the loss is finite again or ``patience`` steps are counted.
    """

    patience: int | None  # None: off
    since: int | None = None  # global step at which the current run of non-finite losses was first seen

    @property
    def watching(self) -> bool:
        return self.since is not None

    def observe(self, global_step: int, loss: float | None) -> int | None:
        """Steps the loss has been non-finite once that reaches ``patience``; None while training may go on."""
        if self.patience is None or loss is None:
            return None
        if math.isfinite(loss):
            self.since = None
            return None
        if self.since is None:
            self.since = global_step
        steps = global_step - self.since + 1
        return steps if steps >= self.patience else None


@dataclass
class Memory:
    """Rank 0's policy state between control points; ``notices`` and ``interval`` are shared by an attempt's
    fits, the NaN watch and the last logged interval belong to one fit."""

    notices: NoticeClock
    nan: NanWatch
    interval: BackupInterval | None = None  # time-based backups inside epochs (None: off)
    logged_interval: float | None = None
    resizing: str | None = None  # the growth this attempt has paused for (it pauses once)

    @classmethod
    def for_fit(cls, spec: JobSpec, notices: NoticeClock, interval: BackupInterval | None) -> Memory:
        nan_stop = spec.callbacks.terminate_on_nan
        return cls(notices, NanWatch(nan_stop.patience_steps if nan_stop is not None else None), interval)


def decide(
    memory: Memory, fit: Fit, state: ControlState, at: At, inbox: Inbox, notices: Notices, clock: Clock
) -> Decision:
    """Rank 0's decision at control point ``at``, from the controller's ``state`` there (see the module doc)."""
    memory.notices.control_point(clock.monotonic)
    decision = _decide(memory, fit, state, at, inbox, clock, notices)
    if at.boundary == "epoch_end" and at.point[0] < fit.end_epoch and not decision.ends:
        # the next epoch of this fit starts right after: decide its start now, one agreement for both
        begin = replace(at, boundary="epoch_begin", metrics=None)
        decision = replace(decision, then=_decide(memory, fit, decision.state, begin, inbox, clock, None))
    return decision


def _decide(
    memory: Memory, fit: Fit, state: ControlState, at: At, inbox: Inbox, clock: Clock, notices: Notices | None
) -> Decision:
    decision = Decision(state=state)
    epoch, step = at.point
    if at.boundary == "epoch_end":
        decision = _epoch_end(decision, fit.spec, epoch - 1, at.metrics or {})
    if at.boundary == "epoch_begin" and step == 0:
        decision = _planned_drop(decision, fit.spec, epoch)
    dues = lr_plan.due_commands(
        inbox.commands, inbox.acks, inbox.branches, decision.state, point=at.point, boundary=at.boundary
    )
    for due in dues:
        decision = _command(decision, due, fit, at.point, inbox)
    if notices is not None:
        action = memory.notices.check(clock.wall, notices.sigterm, notices.sigterm_at, notices.drain)
        decision = _notice(decision, action)
        last = at.point == (fit.spec.epochs, 0)  # training ends here: nothing left to grow for
        decision = _resize(decision, memory, None if last else notices.resize)
    if at.metrics is not None:
        decision = _check_loss(decision, memory.nan, fit, at.point, at.metrics.get("loss"))
    if at.boundary == "step" and decision.backup is None and decision.halt is None and memory.interval is not None:
        decision = _by_interval(decision, memory, memory.interval, clock.monotonic)
    if at.boundary != "epoch_end":
        decision = replace(decision, next_check=_next_check(memory, fit.spec, at, inbox, decision.state))
    return decision


def _epoch_end(decision: Decision, spec: JobSpec, epoch: int, metrics: dict[str, float]) -> Decision:
    """ReduceLROnPlateau, EarlyStopping and the best model once 0-based ``epoch`` is done."""
    end = lr_plan.after_epoch(spec, decision.state, epoch, metrics)
    decision = replace(decision, state=end.state, messages=(*decision.messages, *end.notes))
    if end.lr_change is not None:
        decision = replace(decision, lr=end.lr_change, state=lr_plan.apply_change(decision.state, end.lr_change))
    decision = replace(decision, best_improved=end.best_improved)
    if end.early_stop and epoch + 1 < spec.epochs:
        decision = replace(decision, early_stop=end.early_stop, backup=end.early_stop)
    return decision


def _planned_drop(decision: Decision, spec: JobSpec, epoch: int) -> Decision:
    planned = lr_plan.planned_change(spec, decision.state, epoch)
    if planned is not None:
        return replace(decision, lr=planned, state=lr_plan.apply_change(decision.state, planned))
    if (why := lr_plan.skipped_drop(spec, decision.state, epoch)) is not None:
        return replace(decision, messages=(*decision.messages, why))
    return decision


def _command(decision: Decision, due: Due, fit: Fit, point: Point, inbox: Inbox) -> Decision:
    """One due command's effect; its acknowledgement unless it is a replay of one already acknowledged."""
    command = due.command
    epoch, step = point
    state = decision.state
    if command.kind == "set_lr":
        assert command.learning_rate is not None
        how = "replayed (recorded at this point before a restore)" if due.replay else "applied"
        change = LRChange(command.learning_rate, f"set-lr #{command.seq} {how}: lr {command.learning_rate:g}")
        decision = replace(decision, lr=change)
        state = lr_plan.apply_change(state, change, manual=True)
    else:
        where = "at the end of epoch" if command.when == "epoch_end" or not step else "in epoch"
        reason = f"stop #{command.seq} {where} {epoch + 1 if step else epoch}" + (f", step {step}" if step else "")
        halt = Ending(kind="stopped", epoch=epoch, step=step, reason=reason, attempt=fit.attempt)
        decision = replace(decision, halt=halt, backup=reason)
    if due.note:
        decision = replace(decision, messages=(*decision.messages, f"command #{command.seq}: {due.note}"))
    state = state.model_copy(update={"applied": [*state.applied, command.seq]})
    decision = replace(decision, state=state)
    if (inbox.acks.get(command.seq) if due.replay else None) is not None:
        return decision
    ack = CommandAck(
        seq=command.seq,
        epoch=epoch,
        step=step,
        attempt=fit.attempt,
        branch=len(inbox.branches),
        learning_rate=command.learning_rate,
        note=due.note,
    )
    return replace(decision, acks=(*decision.acks, ack))


def _notice(decision: Decision, action: NoticeAction | None) -> Decision:
    if action is None:
        return decision
    return replace(
        decision,
        backup=decision.backup or action.backup,
        backup_notices=(*decision.backup_notices, *action.notices),
        preempted=action.end,
        wait_until=action.wait_until,
        messages=(*decision.messages, *action.notes),
    )


def _resize(decision: Decision, memory: Memory, request: str | None) -> Decision:
    """An elastic job's growth: back up here and pause, once; whatever else ends the fit here comes first (a
    notice's end or pause, a stop, an early stop), and the request is taken at a later point."""
    if request is None or memory.resizing is not None or decision.ends:
        return decision
    memory.resizing = request
    reason = f"resize: {request}"
    return replace(decision, backup=decision.backup or reason, resize=reason)


def _check_loss(decision: Decision, watch: NanWatch, fit: Fit, point: Point, loss: float | None) -> Decision:
    """Stop, without a backup, once the loss has been NaN or infinite for ``patience_steps`` steps."""
    epoch, step = point
    steps = watch.observe(epoch * fit.steps_per_epoch + step, loss)
    if steps is None:
        return decision
    where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
    rate = decision.state.learning_rate
    reason = (
        f"the loss was {loss} for {steps} step(s) in a row at {where} (lr {rate:g}; "
        f"callbacks.terminate_on_nan.patience_steps {watch.patience}): training stopped without backing "
        f"up the diverged weights; continue from the last backup before it with a lower learning rate, e.g. "
        f"orchestrator resume {fit.job} --lr {rate / 10:g}"
    )
    halt = Ending(kind="diverged", epoch=epoch, step=step, reason=reason, attempt=fit.attempt)
    return replace(
        decision,
        halt=halt,
        backup=None,
        backup_notices=(),
        preempted=None,
        wait_until=None,
        resize=None,
        early_stop=None,
    )


def _by_interval(decision: Decision, memory: Memory, interval: BackupInterval, now: float) -> Decision:
    """A backup by the time-based interval if one is due; the interval is logged when first used and when it
    moves by a quarter."""
    scheduled = interval.due(now)
    seconds = interval.seconds(now)
    if scheduled and not (0.8 < seconds / (memory.logged_interval or -1.0) < 1.25):
        memory.logged_interval = seconds
        message = f"time-based backups inside epochs {interval.describe(now)}"
        return replace(decision, scheduled=True, messages=(*decision.messages, message))
    return replace(decision, scheduled=scheduled)


def _next_check(memory: Memory, spec: JobSpec, at: At, inbox: Inbox, state: ControlState) -> int:
    """Batch calls until the next control point: about ``interval_s`` of training, exactly at a replay, and
    every step while the NaN watch counts."""
    if memory.nan.watching:
        return 1  # the loss went NaN: count the steps until it is finite or patience is out
    calls = max(at.calls, 1)
    if at.elapsed_s > 0 and at.point[1] > at.first_step:
        wanted = int(spec.control.interval_s * calls / at.elapsed_s)
    else:
        wanted = FIRST_CHECK_CALLS
    wanted = max(1, min(MAX_CHECK_CALLS, wanted))
    replay = lr_plan.next_replay(inbox.commands, inbox.acks, inbox.branches, state, at.point)
    if replay is not None and replay[0] == at.point[0]:
        per_call = max(1, spec.steps_per_execution)
        wanted = min(wanted, max(1, math.ceil((replay[1] - at.point[1]) / per_call)))
    return wanted


def epoch_backup_due(spec: JobSpec, point: Point) -> bool:
    """Whether ``point`` is an epoch's end at which ``backup.every_epochs`` (or the last epoch) asks for a backup."""
    epoch, step = point
    return step == 0 and epoch > 0 and (epoch % spec.backup.every_epochs == 0 or epoch == spec.epochs)


def snapshot_due(spec: JobSpec, point: Point) -> bool:
    """Whether ``point`` is at a multiple of ``backup.snapshot_every_epochs`` (the caller checks it is an end)."""
    epoch, step = point
    every = spec.backup.snapshot_every_epochs
    return bool(every and step == 0 and epoch > 0 and epoch % every == 0)
