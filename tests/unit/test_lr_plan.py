"""The LR controller's rules, without Ray or TensorFlow: planned drops, manual takeover, ReduceLROnPlateau and
EarlyStopping (tf_keras' own rules, checked against hand-run sequences), and which commands are due where."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import lr_plan
from orchestrator.records import BranchRecord, Command, CommandAck, ControlState
from orchestrator.spec import JobSpec
from tests.conftest import quickstart_raw


def spec(**changes: Any) -> JobSpec:
    raw = quickstart_raw()
    raw.update(epochs=50, **changes)
    return JobSpec.model_validate(raw)


def run_epochs(job: JobSpec, values: list[float], monitor: str = "val_loss") -> tuple[list[float], str | None]:
    """Feed ``values`` as the monitored metric epoch after epoch; the LR in force after each, and any stop."""
    state = lr_plan.initial_state(job)
    lrs = []
    for epoch, value in enumerate(values):
        end = lr_plan.after_epoch(job, state, epoch, {monitor: value})
        state = end.state
        if end.lr_change:
            state = lr_plan.apply_change(state, end.lr_change)
        lrs.append(state.learning_rate)
        if end.early_stop:
            return lrs, f"{epoch}: {end.early_stop}"
    return lrs, None


def test_planned_drops_apply_once_their_epochs_are_done() -> None:
    job = spec(lr_schedule={"drops": [{"at_epoch": 30, "lr": 0.01}, {"at_epoch": 40, "factor": 0.1}]})
    state = lr_plan.initial_state(job)
    assert lr_plan.planned_change(job, state, 29) is None
    change = lr_plan.planned_change(job, state, 30)
    assert change is not None and change.learning_rate == 0.01
    state = lr_plan.apply_change(state, change)
    change = lr_plan.planned_change(job, state, 40)
    assert change is not None and change.learning_rate == pytest.approx(0.001)
    assert state.segment == 1


def test_a_manual_lr_takes_over_from_the_planned_drops() -> None:
    job = spec(lr_schedule={"drops": [{"at_epoch": 30, "factor": 0.1}]})
    state = lr_plan.apply_change(lr_plan.initial_state(job), lr_plan.LRChange(0.05, "set-lr"), manual=True)
    assert lr_plan.planned_change(job, state, 30) is None
    assert "skipped" in (lr_plan.skipped_drop(job, state, 30) or "")


def test_reduce_on_plateau_follows_tf_keras() -> None:
    # patience 2, factor 0.5, cooldown 1, min_lr 2e-4, min_delta 1e-4 (tf_keras: improvement means < best - delta)
    job = spec(lr_schedule={"reduce_on_plateau": {"patience": 2, "factor": 0.5, "cooldown": 1, "min_lr": 2e-4}})
    values = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    lrs, _ = run_epochs(job, values)
    # what tf_keras 2.21's own ReduceLROnPlateau set for the same sequence (run once, recorded here)
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 2e-4, 2e-4, 2e-4, 2e-4], rel=1e-6)


def test_reduce_on_plateau_maximises_accuracy_in_auto_mode() -> None:
    job = spec(lr_schedule={"reduce_on_plateau": {"monitor": "val_accuracy", "patience": 1, "factor": 0.1}})
    lrs, _ = run_epochs(job, [0.5, 0.6, 0.7, 0.7], monitor="val_accuracy")
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4])


def test_early_stopping_follows_tf_keras() -> None:
    job = spec(callbacks={"early_stopping": {"patience": 3, "min_delta": 0.01}})
    _, stopped = run_epochs(job, [1.0, 0.8, 0.795, 0.79, 0.9, 0.5])
    # improvements need to beat best - 0.01: epochs 2, 3, 4 do not -> stop after epoch index 4
    assert stopped is not None and stopped.startswith("4: early stopping: val_loss did not improve for 3 epoch(s)")


def test_best_model_tracks_the_best_epoch() -> None:
    job = spec(callbacks={"best_model": {"monitor": "val_accuracy"}})
    state = lr_plan.initial_state(job)
    improved = []
    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.8]):
        end = lr_plan.after_epoch(job, state, epoch, {"val_accuracy": value})
        state = end.state
        improved.append(end.best_improved)
    assert improved == [True, True, False, True]
    assert state.best_model.best == 0.8 and state.best_model.epoch == 3


def command(seq: int, when: str = "epoch", kind: str = "set_lr", at_epoch: int | None = None) -> Command:
    return Command(
        seq=seq, kind=kind, learning_rate=0.1 * seq if kind == "set_lr" else None, when=when, at_epoch=at_epoch
    )  # type: ignore[arg-type]


def due(commands: list[Command], point: tuple[int, int], boundary: str, **kwargs: Any) -> list[int]:
    state = kwargs.pop("state", ControlState(learning_rate=1e-3))
    found = lr_plan.due_commands(
        commands, kwargs.pop("acks", {}), kwargs.pop("branches", []), state, point=point, boundary=boundary
    )
    return [d.command.seq for d in found]


def test_commands_are_due_at_their_boundary() -> None:
    commands = [command(1), command(2, "now"), command(3, "at_epoch", at_epoch=4), command(4, "epoch_end", "stop")]
    assert due(commands, (2, 5), "step") == [2]
    assert due(commands, (3, 0), "epoch_begin") == [1, 2]
    assert due(commands, (4, 0), "epoch_begin") == [1, 2, 3]
    assert due(commands, (4, 0), "epoch_end") == [4]


def test_applied_commands_are_never_applied_again() -> None:
    state = ControlState(learning_rate=1e-3, applied=[1])
    assert due([command(1), command(2)], (3, 0), "epoch_begin", state=state) == [2]


def test_an_acknowledged_command_is_replayed_exactly_where_it_took_effect() -> None:
    acks = {1: CommandAck(seq=1, epoch=2, step=7, attempt=1)}
    assert due([command(1, "now")], (2, 5), "step", acks=acks) == []
    assert due([command(1, "now")], (2, 7), "step", acks=acks) == [1]
    state = ControlState(learning_rate=1e-3)
    assert lr_plan.next_replay([command(1, "now")], acks, [], state, (2, 5)) == (2, 7)


def test_a_command_of_an_abandoned_branch_is_void() -> None:
    acks = {1: CommandAck(seq=1, epoch=6, step=0, attempt=1, branch=0)}
    branches = [BranchRecord(branch=1, from_epoch=5, snapshot="e00005-b0")]
    assert due([command(1)], (6, 0), "epoch_begin", acks=acks, branches=branches) == []
    early = {1: CommandAck(seq=1, epoch=3, step=0, attempt=1, branch=0)}
    assert lr_plan.ack_is_live(early[1], branches)


def test_a_stop_is_never_replayed() -> None:
    acks = {1: CommandAck(seq=1, epoch=2, step=3, attempt=1)}
    assert due([command(1, "now", "stop")], (2, 3), "step", acks=acks) == []


def test_drops_must_be_increasing_and_reachable() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="strictly increasing"):
        spec(lr_schedule={"drops": [{"at_epoch": 5, "lr": 0.1}, {"at_epoch": 3, "lr": 0.01}]})
    with pytest.raises(ValidationError, match="never reached"):
        spec(lr_schedule={"drops": [{"at_epoch": 50, "lr": 0.1}]})
    with pytest.raises(ValidationError, match="exactly one of lr"):
        spec(lr_schedule={"drops": [{"at_epoch": 5, "lr": 0.1, "factor": 0.1}]})


def test_a_monitor_must_be_a_logged_metric() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"callbacks\.early_stopping\.monitor: got 'val_acc'"):
        spec(callbacks={"early_stopping": {"monitor": "val_acc"}})
