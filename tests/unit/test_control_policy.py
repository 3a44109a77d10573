"""The worker's control policy, one control point at a time, without Ray or TensorFlow.

``Run`` plays the callback's part: it hands ``decide`` the inputs a control point would gather, keeps the
state the decision returns, records acknowledgements as rank 0's poller does, and at an epoch's end keeps the
next epoch's start decision (``then``) that the workers apply when that epoch begins.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import FrozenInstanceError
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator import lr_plan
from orchestrator.backup_interval import BackupInterval
from orchestrator.control_policy import (
    FIRST_CHECK_CALLS,
    At,
    Boundary,
    Clock,
    Decision,
    Fit,
    Inbox,
    Memory,
    NanWatch,
    Notices,
    decide,
    epoch_backup_due,
    snapshot_due,
)
from orchestrator.lr_plan import Point
from orchestrator.records import BranchRecord, Command, CommandAck, ControlState
from orchestrator.spec import JobSpec
from orchestrator.worker.notice import WAIT_PAST_DEADLINE_S, NoticeClock
from tests.conftest import quickstart_raw

T0 = 1_700_000_000.0  # UNIX seconds
STEPS = 10


def spec(**changes: Any) -> JobSpec:
    raw = quickstart_raw()
    raw.update({"epochs": 6, **changes})
    return JobSpec.model_validate(raw)


class Run:
    """A fit seen from rank 0: one ``decide`` per control point, its decision adopted as the callback would."""

    def __init__(
        self,
        job: JobSpec,
        *,
        end_epoch: int | None = None,
        state: ControlState | None = None,
        grace_s: float | None = None,
        interval: BackupInterval | None = None,
    ) -> None:
        self.fit = Fit(job, "ctrl", attempt=3, steps_per_epoch=STEPS, end_epoch=end_epoch or job.epochs)
        self.memory = Memory.for_fit(job, NoticeClock(grace_s), interval)
        self.state = state or lr_plan.initial_state(job)
        self.commands: list[Command] = []
        self.acks: dict[int, CommandAck] = {}
        self.branches: list[BranchRecord] = []
        self.wall, self.monotonic = T0, 500.0
        self.notices = Notices()
        self.then: Decision | None = None
        self.first_step = 0

    def command(self, kind: str = "set_lr", **fields: Any) -> Command:
        if kind == "set_lr":
            fields.setdefault("learning_rate", 0.02)
        command = Command(seq=len(self.commands) + 1, kind=kind, **fields)  # type: ignore[arg-type]
        self.commands.append(command)
        return command

    def point(self, boundary: Boundary, point: Point, metrics: dict[str, float] | None = None, **at: Any) -> Decision:
        self.wall += 1.0
        self.monotonic += 1.0
        at.setdefault("first_step", self.first_step)
        decision = decide(
            self.memory,
            self.fit,
            self.state,
            At(boundary, point, metrics, **at),
            Inbox(list(self.commands), dict(self.acks), list(self.branches)),
            self.notices,
            Clock(self.wall, self.monotonic),
        )
        self.adopt(decision)
        self.then = decision.then
        return decision

    def adopt(self, decision: Decision) -> None:
        self.state = decision.state
        for ack in decision.acks:  # rank 0 writes the ack and tells its poller
            self.acks[ack.seq] = ack

    def step(self, epoch: int, step: int, loss: float | None = None, **at: Any) -> Decision:
        return self.point("step", (epoch, step), None if loss is None else {"loss": loss}, **at)

    def end(self, epochs_done: int, **metrics: float) -> Decision:
        return self.point("epoch_end", (epochs_done, 0), {"loss": 0.5, **metrics})

    def begin(self) -> Decision:
        """The next epoch starts: the workers apply the start decision agreed at the previous epoch's end."""
        assert self.then is not None, "the epoch's end decided no start for the next epoch"
        decision, self.then = self.then, None
        self.adopt(decision)
        return decision


def quiet(decision: Decision) -> bool:
    """Nothing happens at this point but training on."""
    effects = (decision.lr, decision.backup, decision.halt, decision.preempted, decision.wait_until)
    return effects == (None,) * len(effects) and decision.acks == ()


# ------------------------------------------------------------------------------------------ set-lr
def test_set_lr_now_applies_at_the_next_control_point_and_is_acknowledged_there_once() -> None:
    run = Run(spec())
    assert quiet(run.point("epoch_begin", (0, 0)))
    run.command(when="now", learning_rate=0.02)
    decision = run.step(0, 4)
    assert decision.lr is not None and decision.lr.learning_rate == 0.02
    assert decision.lr.reason == "set-lr #1 applied: lr 0.02"
    assert [(a.seq, a.epoch, a.step, a.attempt, a.learning_rate) for a in decision.acks] == [(1, 0, 4, 3, 0.02)]
    assert (run.state.learning_rate, run.state.segment, run.state.manual, run.state.applied) == (0.02, 1, True, [1])
    assert quiet(run.step(0, 7)) and quiet(run.end(1)) and quiet(run.begin())  # never again


def test_set_lr_for_the_next_epoch_waits_for_the_epoch_boundary() -> None:
    run = Run(spec())
    run.point("epoch_begin", (0, 0))
    run.command(when="epoch", learning_rate=0.005)
    assert quiet(run.step(0, 5))
    end = run.end(1)
    assert end.lr is None and end.acks == ()  # not at the epoch's end itself ...
    begin = run.begin()  # ... but at the next epoch's start, agreed with it
    assert begin.lr is not None and begin.lr.learning_rate == 0.005
    assert [(a.epoch, a.step) for a in begin.acks] == [(1, 0)]


def test_set_lr_at_an_epoch_applies_once_that_many_epochs_are_done_or_late_with_a_note() -> None:
    run = Run(spec())
    run.point("epoch_begin", (0, 0))
    run.command(when="at_epoch", at_epoch=2, learning_rate=0.004)
    assert quiet(run.step(0, 5)) and quiet(run.end(1)) and quiet(run.begin()) and quiet(run.step(1, 5))
    run.end(2)
    begin = run.begin()
    assert begin.lr is not None and begin.lr.learning_rate == 0.004 and [a.epoch for a in begin.acks] == [2]
    late = Run(spec())
    late.command(when="at_epoch", at_epoch=1)
    decision = late.point("epoch_begin", (3, 0))  # a job resumed past the asked epoch
    assert decision.lr is not None and decision.acks[0].note == "asked for epoch 1, applied late"
    assert "command #1: asked for epoch 1, applied late" in decision.messages


def test_a_command_on_a_new_branch_is_acknowledged_on_that_branch() -> None:
    run = Run(spec())
    run.branches.append(BranchRecord(branch=1, from_epoch=2, snapshot="epoch-0002"))
    run.command(when="epoch")
    assert [(a.epoch, a.branch) for a in run.point("epoch_begin", (2, 0)).acks] == [(2, 1)]


def test_two_commands_at_one_point_apply_in_sequence_order_the_last_lr_winning() -> None:
    run = Run(spec())
    run.command(when="now", learning_rate=0.03)
    run.command(when="now", learning_rate=0.01)
    decision = run.step(0, 3)
    assert decision.lr is not None and decision.lr.learning_rate == 0.01
    assert [a.seq for a in decision.acks] == [1, 2] and run.state.segment == 2 and run.state.applied == [1, 2]


# -------------------------------------------------------------------------------------------- stop
def test_stop_now_backs_up_and_halts_at_the_next_control_point() -> None:
    run = Run(spec())
    run.point("epoch_begin", (0, 0))
    run.command("stop", when="now")
    decision = run.step(2, 6)
    assert decision.halt is not None and decision.halt.kind == "stopped" and decision.halt.attempt == 3
    assert decision.halt.reason == "stop #1 in epoch 3, step 6" == decision.backup
    assert (decision.halt.epoch, decision.halt.step) == (2, 6) and [a.seq for a in decision.acks] == [1]


def test_stop_at_the_epoch_end_waits_for_it_and_decides_no_next_epoch() -> None:
    run = Run(spec())
    run.point("epoch_begin", (1, 0))
    run.command("stop", when="epoch_end")
    assert quiet(run.step(1, 5))
    decision = run.end(2)
    assert decision.halt is not None and decision.halt.reason == "stop #1 at the end of epoch 2" == decision.backup
    assert decision.then is None  # the fit ends here: nothing to start


def test_an_acknowledged_stop_is_never_replayed_after_a_restore() -> None:
    run = Run(spec())
    run.command("stop", when="now")
    run.acks[1] = CommandAck(seq=1, epoch=2, step=6, attempt=2)  # the stopped job, resumed from an older backup
    assert quiet(run.point("epoch_begin", (2, 0))) and quiet(run.step(2, 6)) and quiet(run.step(2, 8))


# ---------------------------------------------------------------------------------------- notices
def test_a_sigterm_without_a_deadline_backs_up_and_ends_the_attempt_at_once() -> None:
    run = Run(spec(), grace_s=None)
    run.point("epoch_begin", (0, 0))
    run.notices = Notices(sigterm="rank 1 received SIGTERM", sigterm_at=run.wall)
    decision = run.step(0, 4)
    assert decision.backup is not None and decision.backup.startswith("just-in-time: rank 1 received SIGTERM")
    assert decision.preempted == "rank 1 received SIGTERM" and decision.wait_until is None and decision.halt is None
    assert decision.backup_notices == ("sigterm",)  # typed, in the backup's manifest


def test_a_sigterm_with_a_deadline_trains_on_then_backs_up_once_more_and_ends() -> None:
    run = Run(spec(), grace_s=30.0)
    run.point("epoch_begin", (0, 0))
    run.notices = Notices(sigterm="rank 1 received SIGTERM", sigterm_at=run.wall + 1.0)
    first = run.step(0, 2)
    assert first.backup is not None and first.backup.startswith("just-in-time") and first.preempted is None
    assert any(m.startswith("training on through the notice period") for m in first.messages)
    assert quiet(run.step(0, 3))  # the notice is known now: no second just-in-time backup
    run.wall += 26.0  # with the point's own second: 2 s before the deadline, within the lead (3 s: 1 s gaps + 2 s)
    last = run.step(0, 4)
    assert last.backup is not None and last.backup.startswith("last backup before the deadline")
    assert last.preempted == "rank 1 received SIGTERM" and last.backup_notices == ("sigterm",)


def test_a_drain_with_a_deadline_pauses_after_the_last_backup_until_past_it() -> None:
    run = Run(spec())
    run.point("epoch_begin", (0, 0))
    deadline = run.wall + 2.5
    run.notices = Notices(drain=SimpleNamespace(deadline_ms=int(deadline * 1000)))
    decision = run.step(0, 3)  # too close to the deadline for another: the just-in-time backup is the last
    assert decision.backup is not None and decision.backup.startswith("just-in-time: a node of the group is being")
    assert decision.wait_until == pytest.approx(deadline + WAIT_PAST_DEADLINE_S) and decision.preempted is None
    assert decision.backup_notices == ("drain",)  # what tells Ray Train's controller that the node was reclaimed


def test_a_drain_without_a_deadline_backs_up_once_and_trains_on() -> None:
    run = Run(spec())
    run.notices = Notices(drain=SimpleNamespace(deadline_ms=None))
    decision = run.step(0, 3)
    assert decision.backup is not None and decision.wait_until is None and decision.preempted is None
    assert quiet(run.step(0, 6)) and run.end(1).then is not None  # training on, the next epoch decided


def test_a_notice_and_a_stop_at_one_point_take_one_backup_for_the_stop() -> None:
    run = Run(spec(), grace_s=None)
    run.command("stop", when="now")
    run.notices = Notices(sigterm="rank 0 received SIGTERM")
    decision = run.step(1, 4)
    assert decision.backup == "stop #1 in epoch 2, step 4"  # the stop's reason names the one backup
    assert decision.halt is not None and decision.preempted == "rank 0 received SIGTERM"
    assert decision.backup_notices == ("sigterm",)  # the one backup is the notice's too


def test_a_notice_after_an_epochs_end_is_acted_on_at_the_next_control_point_not_at_the_agreed_start() -> None:
    run = Run(spec(), grace_s=None)
    run.point("epoch_begin", (0, 0))
    run.end(1)
    run.notices = Notices(sigterm="rank 1 received SIGTERM")
    assert quiet(run.begin())  # agreed at the epoch's end, before the notice came
    assert run.step(1, 4).preempted == "rank 1 received SIGTERM"  # the next control point acts on it


# ---------------------------------------------------------------------------------------- replays
def restored_from_an_older_backup(job: JobSpec) -> Run:
    """The job applied set-lr #1 at (epoch 2, step 4) and #2 at (epoch 1, step 3) in attempt 2, then was
    restored from a backup taken at the end of epoch 2 (#2 in its applied list, #1 not yet)."""
    state = lr_plan.apply_change(lr_plan.initial_state(job), lr_plan.LRChange(0.01, "set-lr #2"), manual=True)
    run = Run(job, state=state.model_copy(update={"applied": [2]}))
    run.command(when="now", learning_rate=0.05)
    run.command(when="now", learning_rate=0.01)
    run.acks[1] = CommandAck(seq=1, epoch=2, step=4, attempt=2, learning_rate=0.05)
    run.acks[2] = CommandAck(seq=2, epoch=1, step=3, attempt=2, learning_rate=0.01)
    return run


def test_a_restore_from_an_older_backup_replays_a_command_at_its_recorded_step_not_sooner() -> None:
    run = restored_from_an_older_backup(spec())
    begin = run.point("epoch_begin", (2, 0))
    assert quiet(begin) and begin.next_check == 4  # the workers stop exactly at step 4 (steps_per_execution 1)
    assert quiet(run.step(2, 2, elapsed_s=0.01, calls=50)) and run.step(2, 3).next_check == 1
    replay = run.step(2, 4)
    assert (
        replay.lr is not None
        and replay.lr.reason == "set-lr #1 replayed (recorded at this point before a restore): lr 0.05"
    )
    assert replay.acks == () and run.acks[1].attempt == 2  # the recorded point stays the one in the store
    assert run.state.applied == [2, 1] and run.state.learning_rate == 0.05
    assert quiet(run.step(2, 7))  # #2 was in the backup: never applied again


def test_a_replay_whose_point_was_passed_is_applied_late_with_a_note_and_not_acknowledged_again() -> None:
    run = restored_from_an_older_backup(spec())
    run.first_step = 6  # the restored backup is a partial epoch past the recorded step
    decision = run.point("epoch_begin", (2, 6))
    assert decision.lr is not None and decision.lr.learning_rate == 0.05 and decision.acks == ()
    assert decision.messages == ("command #1: recorded at epoch 3, step 4, applied late",)


def test_a_replay_is_only_reached_with_steps_per_execution_whole_calls() -> None:
    run = restored_from_an_older_backup(spec(steps_per_execution=3))
    assert run.point("epoch_begin", (2, 0)).next_check == 2  # ceil(4 / 3) calls


def test_a_command_acknowledged_on_an_abandoned_branch_is_void() -> None:
    run = restored_from_an_older_backup(spec())
    run.branches.append(BranchRecord(branch=1, from_epoch=2, snapshot="epoch-0002"))
    assert quiet(run.point("epoch_begin", (2, 0))) and quiet(run.step(2, 4)) and quiet(run.step(2, 8))


# ------------------------------------------------------------------------- a command racing an epoch end
def test_set_lr_now_arriving_at_an_epoch_end_applies_once_at_the_next_epochs_start() -> None:
    run = Run(spec())
    run.point("epoch_begin", (0, 0))
    run.command(when="now", learning_rate=0.007)  # read by the poller just before the epoch's last step
    end = run.end(1)
    assert end.lr is None and end.acks == ()
    begin = run.begin()
    assert begin.lr is not None and [(a.epoch, a.step) for a in begin.acks] == [(1, 0)]
    assert quiet(run.step(1, 5))


def test_stop_now_arriving_at_an_epoch_end_halts_at_the_next_epochs_start() -> None:
    run = Run(spec())
    run.command("stop", when="now")
    assert run.end(3).halt is None
    begin = run.begin()
    assert begin.halt is not None and begin.halt.reason == "stop #1 at the end of epoch 3" == begin.backup
    assert (begin.halt.epoch, begin.halt.step) == (3, 0)


def test_a_command_arriving_as_the_fit_ends_waits_for_the_next_fit() -> None:
    run = Run(spec(callbacks={"early_stopping": {"patience": 1}}))
    run.end(1, val_loss=0.5)
    run.command(when="now", learning_rate=0.007)
    early = run.end(2, val_loss=0.6)  # no improvement: early stopping ends the fit here
    assert early.early_stop is not None and early.backup == early.early_stop and early.then is None
    assert early.acks == () and 1 not in run.state.applied
    last = Run(spec(), end_epoch=3)  # the last epoch of this fit (a phase ends): the next fit starts it
    last.command(when="now")
    assert last.end(3).then is None and 1 not in last.state.applied
    assert last.point("epoch_begin", (3, 0)).acks[0].epoch == 3


# --------------------------------------------------------------------------------------- NaN watch
def test_a_nan_loss_is_watched_at_every_step_and_stops_after_patience_without_a_backup() -> None:
    run = Run(spec(callbacks={"terminate_on_nan": {"patience_steps": 3}}))
    run.point("epoch_begin", (0, 0))
    first = run.step(0, 4, math.nan)
    assert first.halt is None and first.next_check == 1  # count the steps: a control point at each
    assert run.step(0, 5, math.inf).halt is None
    run.command("stop", when="now")
    stopped = run.step(0, 6, math.nan)
    assert stopped.halt is not None and stopped.halt.kind == "diverged" and stopped.backup is None
    assert stopped.halt.reason.startswith("the loss was nan for 3 step(s) in a row at epoch 1, step 6 (lr 0.001;")
    assert stopped.halt.reason.endswith("orchestrator resume ctrl --lr 0.0001")


def test_a_finite_loss_forgives_the_nan_count_and_the_pace_returns() -> None:
    run = Run(spec(callbacks={"terminate_on_nan": {"patience_steps": 2}}))
    assert run.step(0, 4, math.nan).next_check == 1
    recovered = run.step(0, 5, 1.5)
    assert recovered.halt is None and recovered.next_check > 1
    assert run.step(0, 6, math.nan).halt is None  # a new run of NaN losses starts at one


def test_a_nan_loss_at_an_epoch_end_voids_the_early_stop_and_its_backup() -> None:
    run = Run(spec(callbacks={"terminate_on_nan": {"patience_steps": 1}, "early_stopping": {"patience": 1}}))
    run.end(1, val_loss=0.5)
    decision = run.point("epoch_end", (2, 0), {"loss": math.nan, "val_loss": 0.6})
    assert decision.halt is not None and decision.halt.kind == "diverged"
    assert decision.halt.reason.startswith("the loss was nan for 1 step(s) in a row at the end of epoch 2")
    assert (decision.early_stop, decision.backup, decision.then) == (None, None, None)


def test_with_terminate_on_nan_off_a_nan_loss_is_not_watched() -> None:
    run = Run(spec(callbacks={"terminate_on_nan": None}))
    decision = run.step(0, 4, math.nan)
    assert decision.halt is None and decision.next_check == FIRST_CHECK_CALLS


def test_nan_watch_stops_after_patience_steps_in_a_row_and_forgives_a_finite_loss() -> None:
    watch = NanWatch(patience=3)
    assert watch.observe(10, 2.3) is None and not watch.watching
    assert watch.observe(17, math.nan) is None and watch.watching  # first seen at a control point: 1 step so far
    assert watch.observe(18, math.inf) is None
    assert watch.observe(19, math.nan) == 3  # three steps in a row: stop
    watch = NanWatch(patience=3)
    watch.observe(17, math.nan)
    assert watch.observe(18, 1.5) is None and not watch.watching  # finite again (a new epoch's mean): start over
    assert watch.observe(30, math.nan) is None and watch.observe(31, math.nan) is None


def test_nan_watch_with_patience_one_stops_at_the_first_sight_and_off_never() -> None:
    assert NanWatch(patience=1).observe(5, -math.inf) == 1
    assert NanWatch(patience=None).observe(5, math.nan) is None
    assert NanWatch(patience=1).observe(5, None) is None  # no loss at this point (rank > 0)


# ------------------------------------------------------------------------------------ planned drops
def test_planned_drops_apply_at_the_start_of_the_epoch_after_their_epochs() -> None:
    run = Run(spec(lr_schedule={"drops": [{"at_epoch": 2, "lr": 0.01}, {"at_epoch": 4, "factor": 0.1}]}))
    assert quiet(run.point("epoch_begin", (0, 0)))
    assert quiet(run.end(1)) and quiet(run.begin())
    assert run.end(2).lr is None
    drop = run.begin()
    assert drop.lr is not None and drop.lr.reason == "planned drop at epoch 2: lr 0.01" and drop.acks == ()
    run.end(3), run.begin(), run.end(4)
    second = run.begin()
    assert second.lr is not None and second.lr.learning_rate == pytest.approx(0.001) and run.state.segment == 2


def test_a_planned_drop_is_skipped_with_a_note_once_set_lr_took_over() -> None:
    run = Run(spec(lr_schedule={"drops": [{"at_epoch": 2, "lr": 0.01}]}))
    run.command(when="now", learning_rate=0.05)
    run.step(1, 3)
    run.end(2)
    skipped = run.begin()
    assert skipped.lr is None and run.state.learning_rate == 0.05
    assert skipped.messages == ("planned drop at epoch 2 skipped: a manual set-lr took over the LR",)


def test_a_resumed_partial_epoch_does_not_apply_its_planned_drop_again() -> None:
    run = Run(spec(lr_schedule={"drops": [{"at_epoch": 2, "lr": 0.01}]}))
    run.first_step = 5
    assert quiet(run.point("epoch_begin", (2, 5)))  # the drop was applied at (2, 0), before the backup


def test_reduce_on_plateau_changes_the_lr_at_the_epoch_end_itself() -> None:
    run = Run(spec(lr_schedule={"reduce_on_plateau": {"patience": 1, "factor": 0.5}}))
    run.end(1, val_loss=0.9)
    reduced = run.end(2, val_loss=0.95)
    assert reduced.lr is not None and reduced.lr.learning_rate == pytest.approx(5e-4) and run.state.segment == 1
    assert reduced.then is not None and reduced.then.state.learning_rate == pytest.approx(5e-4)


def test_early_stopping_at_the_last_epoch_ends_nothing_more() -> None:
    run = Run(spec(epochs=3, callbacks={"early_stopping": {"patience": 1}, "best_model": {"monitor": "val_loss"}}))
    assert run.end(1, val_loss=0.5).best_improved
    assert run.end(2, val_loss=0.6).early_stop is not None
    last = Run(spec(epochs=3, callbacks={"early_stopping": {"patience": 1}}))
    last.end(2, val_loss=0.5)
    final = last.end(3, val_loss=0.6)
    assert final.early_stop is None and final.backup is None and final.then is None


# ------------------------------------------------------------------------- pace, time-based backups
def test_the_next_control_point_is_about_interval_s_of_batch_calls_away() -> None:
    run = Run(spec(control={"interval_s": 2.0}))
    assert run.point("epoch_begin", (0, 0)).next_check == FIRST_CHECK_CALLS
    assert run.step(0, 9, calls=0, elapsed_s=0.5).next_check == 4  # 2 s x 1 call / 0.5 s
    assert run.step(0, 9, calls=4, elapsed_s=0.001).next_check == 8000
    assert run.step(0, 9, calls=4, elapsed_s=1e-9).next_check == 100_000  # at most MAX_CHECK_CALLS
    assert run.end(1).next_check == FIRST_CHECK_CALLS and run.begin().next_check == FIRST_CHECK_CALLS


def test_a_time_based_backup_is_scheduled_when_due_and_its_interval_logged_once() -> None:
    interval = BackupInterval(max_overhead=0.01, started_at=0.0, fixed_s=10.0)
    run = Run(spec(), interval=interval)
    run.monotonic = 5.0
    assert not run.step(0, 2).scheduled
    run.monotonic = 20.0
    due = run.step(0, 4)
    assert due.scheduled and due.backup is None
    assert due.messages == ("time-based backups inside epochs every 10 s (backup.every_seconds)",)
    again = run.step(0, 5)
    assert again.scheduled and again.messages == ()  # the same interval: not logged again
    assert not run.end(1).scheduled  # the epoch's end has its own backup


def test_a_time_based_backup_gives_way_to_a_decided_one() -> None:
    run = Run(spec(), interval=BackupInterval(max_overhead=0.01, fixed_s=1.0))
    run.command("stop", when="now")
    decision = run.step(0, 4)
    assert decision.backup is not None and not decision.scheduled


# ----------------------------------------------------------------------------------- the decision
def test_a_decision_is_frozen_and_travels_pickled_with_its_next_epochs_start() -> None:
    run = Run(spec(lr_schedule={"drops": [{"at_epoch": 1, "lr": 0.01}]}))
    decision = run.end(1)
    with pytest.raises(FrozenInstanceError):
        decision.backup = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(decision)) == decision
    assert decision.then is not None and decision.then.lr is not None


def test_epoch_backups_and_snapshots_are_due_at_their_epoch_ends() -> None:
    job = spec(epochs=5, backup={"every_epochs": 2, "snapshot_every_epochs": 3})
    assert [e for e in range(6) if epoch_backup_due(job, (e, 0))] == [2, 4, 5]  # and always after the last
    assert not epoch_backup_due(job, (2, 3))
    assert [e for e in range(6) if snapshot_due(job, (e, 0))] == [3] and not snapshot_due(spec(), (3, 0))


def test_a_growth_request_backs_up_and_pauses_once_at_the_next_control_point() -> None:
    run = Run(spec())
    run.point("epoch_begin", (0, 0))
    assert quiet(run.step(0, 3))
    run.notices = Notices(resize="room for 2 worker(s) again (to 2 workers)")
    decision = run.step(0, 5)
    assert decision.resize == decision.backup == "resize: room for 2 worker(s) again (to 2 workers)"
    assert decision.ends and decision.halt is None and decision.preempted is None and decision.wait_until is None
    assert run.step(0, 7).resize is None  # once per attempt: the controller restarts the group meanwhile


@pytest.mark.parametrize("other", ["stop", "early_stop", "sigterm"])
def test_what_else_ends_the_fit_at_that_point_comes_first_and_the_growth_waits(other: str) -> None:
    job = spec(callbacks={"early_stopping": {"monitor": "loss", "patience": 1}}) if other == "early_stop" else spec()
    run = Run(job, grace_s=None)
    run.point("epoch_begin", (0, 0))
    if other == "stop":
        run.command("stop", when="now")
    if other == "early_stop":
        run.end(1, loss=0.5)
        run.notices = Notices(resize="grow (to 2 workers)")
        decision = run.end(2, loss=0.6)  # no improvement for one epoch: early stop
        assert decision.early_stop is not None
    else:
        run.notices = Notices(
            resize="grow (to 2 workers)", sigterm="rank 1 received SIGTERM" if other == "sigterm" else None
        )
        decision = run.step(0, 4)
        assert decision.halt is not None or decision.preempted is not None
    assert decision.resize is None
    if other == "early_stop":  # the fit ends with the early stop: the request is not taken
        return
    run.notices = Notices(resize="grow (to 2 workers)")
    assert run.step(0, 6).resize == "resize: grow (to 2 workers)"  # not taken yet: a later point takes it


def test_a_growth_asked_for_as_training_ends_is_left_alone() -> None:
    run = Run(spec())
    run.end(5)
    run.notices = Notices(resize="grow (to 2 workers)")
    decision = run.end(6)
    assert decision.resize is None and not decision.ends


def test_a_nan_loss_voids_a_growth_pause_at_the_same_point() -> None:
    run = Run(spec())
    run.notices = Notices(resize="grow (to 2 workers)")
    decision = run.step(0, 4, loss=math.nan)
    assert decision.halt is not None and decision.halt.kind == "diverged" and decision.resize is None
