"""The LR controller's decisions, as pure functions of the spec, the commands and the controller's state.

No Ray, no TensorFlow: the worker's ``TrainingControl`` callback asks these functions what to do at each
boundary (rank 0 decides, every worker applies the same answer), and unit tests check the rules directly.

Rules (documented in docs/lr-control.md):

* The LR starts at the optimizer's ``learning_rate``. A planned drop ``{at_epoch: N, ...}`` applies once N
  epochs are done (before the (N+1)-th), unless a manual ``set-lr`` has taken over: from the first manual LR
  on, planned drops are skipped (and logged as skipped).
* ReduceLROnPlateau and EarlyStopping follow tf_keras' own rules exactly, with their state (best, wait,
  cooldown) carried in every backup so a resumed run reduces and stops at the same epochs.
* A command is applied once. Its first effect is acknowledged with its (epoch, step); a run restored from a
  backup taken before that point applies it again at exactly that point (replay), so the LR timeline of the
  resumed run is the one recorded. A command acknowledged on a branch that ``resume --from-epoch`` abandoned,
  at or after the fork, is void.
* A segment is a run of epochs with one LR and one configuration: it increments at every LR change and at
  every new branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from orchestrator.records import BranchRecord, Command, CommandAck, ControlState, MonitorState, PlateauState
from orchestrator.spec import JobSpec, MonitorMode

MAX_MODE_HINTS = ("acc", "auc", "precision", "recall")


def initial_state(spec: JobSpec) -> ControlState:
    return ControlState(learning_rate=spec.phase_optimizer(0).learning_rate)


def maximises(monitor: str, mode: MonitorMode) -> bool:
    """Whether a larger value of ``monitor`` is better (tf_keras' ``auto``: accuracy-like metrics are maximised)."""
    if mode != "auto":
        return mode == "max"
    return any(hint in monitor for hint in MAX_MODE_HINTS)


@dataclass(frozen=True)
class LRChange:
    learning_rate: float
    reason: str


def planned_change(spec: JobSpec, state: ControlState, epochs_done: int) -> LRChange | None:
    """The planned drop due once ``epochs_done`` epochs are done, if any and if no manual LR has taken over."""
    for drop in spec.lr_schedule.drops:
        if drop.at_epoch != epochs_done:
            continue
        if state.manual:
            return None
        if drop.lr is not None:
            return LRChange(drop.lr, f"planned drop at epoch {epochs_done}: lr {drop.lr:g}")
        assert drop.factor is not None
        lr = state.learning_rate * drop.factor
        return LRChange(lr, f"planned drop at epoch {epochs_done}: lr x {drop.factor:g}")
    return None


def skipped_drop(spec: JobSpec, state: ControlState, epochs_done: int) -> str | None:
    """Why a planned drop at ``epochs_done`` is not applied (a manual LR took over), for the log."""
    if state.manual and any(d.at_epoch == epochs_done for d in spec.lr_schedule.drops):
        return f"planned drop at epoch {epochs_done} skipped: a manual set-lr took over the LR"
    return None


@dataclass(frozen=True)
class EpochEnd:
    """What happens once an epoch's metrics are known."""

    state: ControlState
    lr_change: LRChange | None = None
    early_stop: str | None = None
    best_improved: bool = False
    notes: list[str] = field(default_factory=list)


def after_epoch(spec: JobSpec, state: ControlState, epoch: int, logs: dict[str, float]) -> EpochEnd:
    """ReduceLROnPlateau, EarlyStopping and best-model tracking after 0-based ``epoch`` (tf_keras' rules)."""
    notes: list[str] = []
    plateau, lr_change = _after_epoch_plateau(spec, state, logs, notes)
    stopping, early_stop = _after_epoch_early_stopping(spec, state, epoch, logs)
    best_state, best_improved = _after_epoch_best_model(spec, state, epoch, logs)
    new_state = state.model_copy(update={"plateau": plateau, "early_stopping": stopping, "best_model": best_state})
    return EpochEnd(new_state, lr_change, early_stop, best_improved, notes)


def _after_epoch_plateau(
    spec: JobSpec, state: ControlState, logs: dict[str, float], notes: list[str]
) -> tuple[PlateauState, LRChange | None]:
    """ReduceLROnPlateau's counters after an epoch, and its LR change if it reduces now."""
    lr_change = None
    plateau_spec = spec.lr_schedule.reduce_on_plateau
    plateau = state.plateau
    if plateau_spec is None:
        return plateau, None
    current = logs.get(plateau_spec.monitor)
    if current is None or math.isnan(current):
        notes.append(f"reduce_on_plateau: {plateau_spec.monitor} not logged this epoch; skipped")
        return plateau, None
    wait, cooldown, best = plateau.wait, plateau.cooldown, plateau.best
    if cooldown > 0:
        cooldown -= 1
        wait = 0
    if _plateau_improved(plateau_spec.monitor, plateau_spec.mode, current, best, plateau_spec.min_delta):
        best, wait = current, 0
    elif cooldown <= 0:
        wait += 1
        if wait >= plateau_spec.patience:
            old = state.learning_rate
            if old > float(_float32(plateau_spec.min_lr)):
                new = max(old * plateau_spec.factor, plateau_spec.min_lr)
                lr_change = LRChange(
                    new,
                    f"reduce_on_plateau: {plateau_spec.monitor} did not improve for {wait} epoch(s); "
                    f"lr {old:g} -> {new:g}",
                )
                cooldown, wait = plateau_spec.cooldown, 0
    return PlateauState(best=best, wait=wait, cooldown=cooldown), lr_change


def _after_epoch_early_stopping(
    spec: JobSpec, state: ControlState, epoch: int, logs: dict[str, float]
) -> tuple[MonitorState, str | None]:
    """EarlyStopping's counters after an epoch, and why training stops now, if it does."""
    stopping_spec = spec.callbacks.early_stopping
    stopping = state.early_stopping
    if stopping_spec is None:
        return stopping, None
    current = logs.get(stopping_spec.monitor)
    if current is None or math.isnan(current):
        return stopping, None
    wait = stopping.wait + 1
    if _stopping_improved(stopping_spec.monitor, stopping_spec.mode, current, stopping.best, stopping_spec.min_delta):
        return MonitorState(best=current, wait=0, epoch=epoch), None
    stopping = stopping.model_copy(update={"wait": wait})
    if wait >= stopping_spec.patience and epoch > 0:
        return stopping, (
            f"early stopping: {stopping_spec.monitor} did not improve for {wait} epoch(s) "
            f"(best {stopping.best:.4g} at epoch {(stopping.epoch or 0) + 1})"
        )
    return stopping, None


def _after_epoch_best_model(
    spec: JobSpec, state: ControlState, epoch: int, logs: dict[str, float]
) -> tuple[MonitorState, bool]:
    """The best model's record after an epoch, and whether this epoch's model is the new best."""
    best_spec = spec.callbacks.best_model
    best_state = state.best_model
    if best_spec is None:
        return best_state, False
    current = logs.get(best_spec.monitor)
    if current is None or math.isnan(current):
        return best_state, False
    if _best_improved(best_spec.monitor, best_spec.mode, current, best_state.best):
        return MonitorState(best=current, wait=0, epoch=epoch), True
    return best_state, False


def apply_change(state: ControlState, change: LRChange, *, manual: bool = False) -> ControlState:
    """The state after an LR change: a new segment; ``manual`` once a person has set the LR."""
    return state.model_copy(
        update={
            "learning_rate": change.learning_rate,
            "segment": state.segment + 1,
            "manual": state.manual or manual,
        }
    )


def _plateau_improved(monitor: str, mode: MonitorMode, current: float, best: float | None, delta: float) -> bool:
    if best is None:
        return True
    return current > best + delta if maximises(monitor, mode) else current < best - delta


def _stopping_improved(monitor: str, mode: MonitorMode, current: float, best: float | None, delta: float) -> bool:
    if best is None:
        return True
    return current - delta > best if maximises(monitor, mode) else current + delta < best


def _best_improved(monitor: str, mode: MonitorMode, current: float, best: float | None) -> bool:
    if best is None:
        return True
    return current > best if maximises(monitor, mode) else current < best


def _float32(value: float) -> float:
    """tf_keras compares the LR with ``np.float32(min_lr)``; the same rounding, without numpy."""
    import struct

    return float(struct.unpack("f", struct.pack("f", value))[0])


# ------------------------------------------------------------------------------------------ commands
Point = tuple[int, int]  # (0-based epoch, steps of it done)


def ack_is_live(ack: CommandAck, branches: list[BranchRecord]) -> bool:
    """False when a later branch forked at or before the point where the command took effect."""
    return not any(b.branch > ack.branch and ack.epoch >= b.from_epoch for b in branches)


@dataclass(frozen=True)
class Due:
    command: Command
    replay: bool
    note: str | None = None


def due_commands(
    commands: list[Command],
    acks: dict[int, CommandAck],
    branches: list[BranchRecord],
    state: ControlState,
    *,
    point: Point,
    boundary: str,
) -> list[Due]:
    """The commands to apply at ``point``, in sequence order.

    ``boundary`` is ``"epoch_begin"`` (an epoch starts, or a resumed one continues), ``"step"`` (a control
    point inside an epoch) or ``"epoch_end"``.
    """
    due: list[Due] = []
    epoch, _step = point
    for command in sorted(commands, key=lambda c: c.seq):
        if command.seq in state.applied:
            continue
        ack = acks.get(command.seq)
        if ack is not None:
            if command.kind != "set_lr" or not ack_is_live(ack, branches):
                continue  # a stop is never replayed; a command of an abandoned branch is void
            recorded = (ack.epoch, ack.step)
            if recorded == point and boundary != "epoch_end":
                due.append(Due(command, replay=True))
            elif recorded < point and boundary != "epoch_end":
                due.append(Due(command, replay=True, note=f"recorded at {_where(recorded)}, applied late"))
            continue
        if command.kind == "stop":
            if command.when == "epoch_end":
                if boundary == "epoch_end":
                    due.append(Due(command, replay=False))
            elif boundary != "epoch_end":
                due.append(Due(command, replay=False))
            continue
        if boundary == "epoch_end":
            continue
        if command.when == "now" or (command.when == "epoch" and boundary == "epoch_begin"):
            due.append(Due(command, replay=False))
        elif command.when == "at_epoch" and boundary == "epoch_begin" and command.at_epoch is not None:
            if command.at_epoch == epoch:
                due.append(Due(command, replay=False))
            elif command.at_epoch < epoch:
                due.append(Due(command, replay=False, note=f"asked for epoch {command.at_epoch}, applied late"))
    return due


def next_replay(
    commands: list[Command],
    acks: dict[int, CommandAck],
    branches: list[BranchRecord],
    state: ControlState,
    point: Point,
) -> Point | None:
    """The next recorded point after ``point`` where a command must be replayed (the workers must stop there)."""
    kinds = {c.seq: c.kind for c in commands}
    points = [
        (a.epoch, a.step)
        for seq, a in acks.items()
        if kinds.get(seq) == "set_lr"
        and seq not in state.applied
        and ack_is_live(a, branches)
        and (a.epoch, a.step) > point
    ]
    return min(points) if points else None


def _where(point: Point) -> str:
    return f"epoch {point[0] + 1}, step {point[1]}"
