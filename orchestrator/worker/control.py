"""TrainingControl: the one callback that decides, on rank 0, and applies, on every worker, at the same step.

At every epoch boundary, and about every ``control.interval_s`` seconds inside an epoch (a *control point*),
the workers agree on one ``Decision`` (docs/architecture.md, "Workers agree"): rank 0 gathers the commands in
the store (read by a background poller, so training never waits on storage), the preemption notices
(TensorFlow's coordination service for SIGTERM, Ray's node drain), the clock and the epoch's metrics, asks
``orchestrator.control_policy.decide`` (pure: every rule of the decision is there), and broadcasts the answer;
every worker applies the same decision at the same step, one small method per effect. A control point costs one
agreement (``worker.agreement``: TensorFlow's coordination service, a couple of milliseconds): Ray Train's
node-drain notice, which its watcher hands to every worker, is read on rank 0 and travels in the decision
(``ray.train.get_preemption_info`` would be a Ray Train collective, the same broadcast of rank 0's copy). An
epoch boundary is one control point too: the decision broadcast at an epoch's end carries the next epoch's start
decision (planned drops, ``set-lr`` for the next epoch), which every worker applies when that epoch begins; only
the first epoch of a ``fit()`` agrees at its start.

What a decision may hold:

* an LR change (planned drop, ``set-lr``, ReduceLROnPlateau), set on every replica's optimizer; each applied
  command's first effect is acknowledged in the store, and replayed at the same point after a restore
  (``orchestrator.lr_plan``);
* a just-in-time backup (a SIGTERM notice from any worker, or a node drain) and, where the notice's deadline is
  known, a last one just before it, the workers training on in between (``orchestrator.worker.notice``);
* a stop (``orchestrator stop``): a backup at this step, then the attempt ends (STOPPED);
* early stopping, and a new best model.

Backups at epoch ends (every ``backup.every_epochs``), every ``backup.every_steps`` steps, and by time inside
epochs (``backup.every_seconds``; by default an interval chosen from the measured cost: ``backup_interval``,
decided on rank 0 at control points) are taken here too, with the controller's state in their manifest, so a
restored run continues with the same LR, plateau and early-stopping counters, best-model metric and applied
commands.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray.train
import tf_keras as keras

from orchestrator import control_policy, resize_signal
from orchestrator.backup_interval import BackupInterval
from orchestrator.control_policy import FIRST_CHECK_CALLS, Boundary, Decision
from orchestrator.errors import OrchestratorError
from orchestrator.lr_plan import Point
from orchestrator.records import (
    CommandAck,
    ControlState,
    Ending,
    FailureRecord,
    NoticeSource,
)
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from orchestrator.worker.agreement import agreed
from orchestrator.worker.async_writes import wait_for_writes
from orchestrator.worker.backup import BackupUploader, backup_name, save_backup, save_snapshot
from orchestrator.worker.control_inputs import LOCAL_DRAIN_NOTICE, CommandPoller
from orchestrator.worker.notice import WAIT_PAST_DEADLINE_S, NoticeClock
from orchestrator.worker.saved_models import save_best

RESIZE_WAIT_S = 150.0  # a paused group not restarted by then ends its attempt (the controller waits 120 s)


class PreemptionNoticeError(OrchestratorError):
    """The attempt ended after a just-in-time backup because a worker was told it will be stopped."""

    code = "preempted"
    exit_code = 1
    failure_kind = "notice"  # Ray Train's controller records the failure it ends as a notice (FailureRecord.kind)


class Halt(Exception):
    """Ends the current ``fit()`` on every worker at an agreed step (raised by all of them alike)."""

    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.reason)
        self.ending = ending


@dataclass
class AgreementCount:
    """How many control agreements this worker took part in, and how long it waited in them."""

    at_boundaries: int = 0  # an epoch's start (first epoch of a fit) or end
    within_epochs: int = 0
    waited_s: float = 0.0
    first_s: float | None = None  # the attempt's first agreement: it also waits for the slowest worker's start

    def describe(self) -> str:
        first = f" (the first {self.first_s:.2f} s)" if self.first_s is not None else ""
        return (
            f"{self.at_boundaries + self.within_epochs} control agreements ({self.at_boundaries} at epoch "
            f"boundaries, {self.within_epochs} within epochs), {self.waited_s:.2f} s waiting in them{first}"
        )


def finite_weights(model: Any) -> bool:
    """True unless a trainable weight is NaN or infinite (a diverged step): such weights are never backed up.

    Every replica holds the same weights, so every worker reaches the same answer without a collective."""
    return all(bool(np.isfinite(value).all()) for value in keras.backend.batch_get_value(model.trainable_weights))


class TrainingControl(keras.callbacks.Callback):
    """See the module docstring. One instance per ``fit()``; the state carries over between them."""

    def __init__(
        self,
        *,
        spec: JobSpec,
        store: JobStore,
        job: str,
        rank: int,
        attempt: int,
        state: ControlState,
        steps_per_epoch: int,
        start_epoch: int,
        first_step: int,
        poller: CommandPoller | None,
        log: logging.Logger,
        preemption: Any = None,
        uploader: BackupUploader | None = None,
        end_epoch: int | None = None,
        count: AgreementCount | None = None,
        notices: NoticeClock | None = None,
        interval: BackupInterval | None = None,
        run: str | None = None,
    ) -> None:
        super().__init__()
        self._supports_tf_logs = True
        self.spec, self.store, self.job, self.rank, self.attempt = spec, store, job, rank, attempt
        self.state = state
        self.steps = steps_per_epoch
        self.epoch = start_epoch
        self.first_step = first_step
        self.poller = poller
        self.log = log
        self.finished: Ending | None = None
        self.epoch_learning_rate = state.learning_rate
        self.epoch_segment = state.segment
        self._calls = 0
        self._next_check = FIRST_CHECK_CALLS
        self._last_check = time.monotonic()
        self.preemption = preemption  # SigtermNotice (TensorFlow's coordination-service notice), or None
        self.uploader = uploader  # rank 0's background uploads
        self._last_saved: Point = (start_epoch, first_step)
        every = spec.backup.every_steps
        self._last_slot = (start_epoch * steps_per_epoch + first_step) // every if every else 0
        self.end_epoch = spec.epochs if end_epoch is None else end_epoch  # this fit's last epoch (exclusive)
        self._next_begin: Decision | None = None  # agreed at the previous epoch's end
        self.count = count if count is not None else AgreementCount()  # shared by an attempt's fits
        self.notices = notices if notices is not None else NoticeClock(spec.failures.sigterm_grace_s)  # rank 0's
        self.notices.fit_started()
        self.interval = interval  # rank 0's time-based backups inside epochs (None: off)
        self._fit = control_policy.Fit(spec, job, attempt, steps_per_epoch, self.end_epoch)
        self.memory = control_policy.Memory.for_fit(spec, self.notices, interval)  # rank 0's policy state
        self.run = run if spec.scaling.elastic else None  # an elastic job's growth handshake (resize_signal)

    # ------------------------------------------------------------------------------------ callbacks
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = int(epoch)
        self._calls = 0
        decision, self._next_begin = self._next_begin, None
        if decision is None:  # the first epoch of this fit(): nothing was agreed for it yet
            decision = self._agree("epoch_begin", (self.epoch, self.first_step))
        self._apply(decision, (self.epoch, self.first_step))
        self.epoch_learning_rate = self.state.learning_rate
        self.epoch_segment = self.state.segment
        self._last_check = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._calls += 1
        done = self.first_step + int(batch) + 1  # tf_keras may pass numpy.int64 (docs/architecture.md)
        every = self.spec.backup.every_steps
        if every:
            slot = (self.epoch * self.steps + done) // every
            if slot > self._last_slot:
                self._last_slot = slot
                if done < self.steps:  # at an epoch's end the epoch backup, if due, is the one to take
                    self._backup((self.epoch, done), "scheduled")
        if self._calls < self._next_check or done >= self.steps:
            return
        self._calls = 0
        point = (self.epoch, done)
        loss = {"loss": float(logs["loss"])} if self.rank == 0 and logs and "loss" in logs else None
        self._apply(self._agree("step", point, loss), point)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        done = int(epoch) + 1
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        point = (done, 0)
        decision = self._agree("epoch_end", point, metrics)
        self._next_begin = decision.then
        self._apply(decision, point)
        self.first_step = 0  # a partial epoch is the first and only epoch of its fit

    # -------------------------------------------------------------------------------------- decide
    def _agree(self, boundary: Boundary, point: Point, metrics: dict[str, float] | None = None) -> Decision:
        decision = None
        if LOCAL_DRAIN_NOTICE is None:  # this Ray has no worker-local notice: ask it collectively
            drain = ray.train.get_preemption_info()
        if self.rank == 0:
            if LOCAL_DRAIN_NOTICE is not None:
                drain = LOCAL_DRAIN_NOTICE()
            decision = self._decide(boundary, point, metrics, drain)
        started = time.monotonic()
        decision = agreed(decision)
        waited = time.monotonic() - started
        count = self.count
        if count.first_s is None:
            count.first_s = waited

        count.waited_s += waited
        if boundary == "step":
            count.within_epochs += 1
        else:
            count.at_boundaries += 1
        return decision  # type: ignore[return-value]  # rank 0 always decides

    def _decide(self, boundary: Boundary, point: Point, metrics: dict[str, float] | None, drain: Any) -> Decision:
        """Rank 0 gathers what the policy needs (commands, notices, clock, metrics) and asks it."""
        assert self.poller is not None
        commands, acks, branches = self.poller.view()
        clock = control_policy.Clock(wall=time.time(), monotonic=time.monotonic())
        sigterm = self.preemption
        notices = control_policy.Notices(
            sigterm=sigterm.preemption_message if sigterm is not None else None,
            sigterm_at=sigterm.noticed_at if sigterm is not None else None,
            drain=drain,
            resize=self._resize_request(),
        )
        at = control_policy.At(
            boundary, point, metrics, self.first_step, calls=self._calls, elapsed_s=clock.monotonic - self._last_check
        )
        inbox = control_policy.Inbox(commands, acks, branches)
        return control_policy.decide(self.memory, self._fit, self.state, at, inbox, notices, clock)

    def _resize_request(self) -> str | None:
        """Rank 0: an elastic job's controller asking to grow the group (``resize_signal``), if it is."""
        if self.run is None:
            return None
        try:
            request = resize_signal.requested(self.run)
        except Exception as exc:  # Ray's KV unreachable or moved: the job keeps its size
            self.log.warning("elastic: cannot read the controller's resize requests (%s: %s)", type(exc).__name__, exc)
            self.run = None
            return None
        return f"{request.reason} (to {request.size} workers)" if request is not None else None

    # --------------------------------------------------------------------------------------- apply
    def _apply(self, decision: Decision, point: Point) -> None:
        """Every worker carries out the agreed decision, one effect at a time, in this order."""
        self._next_check = decision.next_check
        self._last_check = time.monotonic()
        self.state = decision.state
        self._set_learning_rate(decision, point)
        self._record_acks(decision.acks)
        if decision.best_improved:
            save_best(self.model, self.store, self.job, self.rank, self.spec, self.state, point[0] - 1, self.log)
        if decision.early_stop:
            self._stop_early(decision.early_stop, point)
        self._take_backups(decision, point)
        self._take_snapshot(point)
        if decision.preempted:
            self._end_preempted(decision.preempted, point)
        if decision.halt is not None:
            self._halt(decision.halt)
        if decision.wait_until is not None:
            self._wait_to_be_stopped(decision.wait_until, point)
        if decision.resize is not None:
            self._pause_for_resize(decision.resize, point)

    def _set_learning_rate(self, decision: Decision, point: Point) -> None:
        """The LR on every replica's optimizer; rank 0 logs the decision's reasons, then the change."""
        if decision.lr is not None:
            keras.backend.set_value(self.model.optimizer.learning_rate, decision.lr.learning_rate)
        if self.rank != 0:
            return
        for message in decision.messages:
            self.log.info(message)
        if decision.lr is not None:
            self.log.info(
                "%s (at epoch %d, step %d; segment %d)",
                decision.lr.reason,
                point[0] + 1,
                point[1],
                decision.state.segment,
            )

    def _record_acks(self, acks: tuple[CommandAck, ...]) -> None:
        if self.rank != 0:
            return
        for ack in acks:
            self.store.write_ack(self.job, ack)
            assert self.poller is not None
            self.poller.recorded(ack)

    def _stop_early(self, reason: str, point: Point) -> None:
        epoch = point[0]
        if self.rank == 0:
            self.log.info("%s: stopping after epoch %d", reason, epoch)
        self.finished = Ending(kind="early_stopped", epoch=epoch, reason=reason, attempt=self.attempt)
        self.model.stop_training = True

    def _take_backups(self, decision: Decision, point: Point) -> None:
        """The decided backup, the time-based one, or the epoch's (``backup.every_epochs``) if not yet taken."""
        due = control_policy.epoch_backup_due(self.spec, point) and self._last_saved != point
        if decision.backup is not None or decision.scheduled or due:
            started = time.monotonic()
            self._backup(point, decision.backup or "scheduled", decision.backup_notices)
            if decision.backup is not None:  # decided backups wait for their upload: what a last one would take
                self.notices.backed_up(time.monotonic() - started)

    def _take_snapshot(self, point: Point) -> None:
        if control_policy.snapshot_due(self.spec, point) and self._is_epoch_end(point) and finite_weights(self.model):
            save_snapshot(
                self.model,
                self.store,
                self.job,
                rank=self.rank,
                epoch=point[0],
                attempt=self.attempt,
                control=self.state,
                log=self.log,
            )

    def _end_preempted(self, why: str, point: Point) -> None:
        # no worker may end the attempt before rank 0 has stored this backup: Ray Train tears the whole group
        # down at the first worker's error, and rank 0 waits for its upload only after the others' writes
        epoch, step = point
        wait_for_writes()  # this worker's copy on its disk (written asynchronously)
        agreed(None)
        raise PreemptionNoticeError(
            f"{why}: backup taken at epoch {epoch + 1 if step else epoch}, step {step}; this "
            "attempt ends so that Ray Train restarts the workers from it",
            hint="a SIGTERM'd worker counts against failures.max_failures; a drained node as a preemption",
        )

    def _halt(self, halt: Ending) -> None:
        if self.rank == 0:
            diverged = halt.kind == "diverged"
            suffix = "" if diverged else ": backup taken, training stops"
            self.log.log(logging.WARNING if diverged else logging.INFO, "%s%s", halt.reason, suffix)
        raise Halt(halt)

    def _wait_to_be_stopped(self, until: float, point: Point) -> None:
        """After the last backup before a drain's deadline: any further step would be lost, so train no more and
        let Ray Train tear the group down at the deadline and restart it from that backup.

        No worker raises, so Ray Train's controller reports no failure to ``FailureLog``: rank 0 records this
        preemption in ``failures.jsonl`` itself, from the point where training paused."""
        epoch, step = point
        if self.rank == 0:
            where = f"epoch {epoch + 1 if step else epoch}, step {step}"
            self.log.info(
                "training pauses at %s until the drained node goes: Ray Train restarts the group from "
                "this backup at the drain's deadline",
                where,
            )
            record = FailureRecord(
                reasons=[f"rank 0: paused at {where} after the last backup before the drain's deadline"],
                kind="preemption",
                epoch=epoch,
                step=step,
                steps_per_epoch=self.steps,
            )
            try:
                self.store.append_failure(self.job, record)
            except OrchestratorError as exc:
                self.log.warning("could not record the preemption: %s", exc.message)
        while time.time() < until:
            time.sleep(min(1.0, max(0.0, until - time.time())))
        raise PreemptionNoticeError(
            f"the group was still running {WAIT_PAST_DEADLINE_S:.0f} s after the drain's deadline; this attempt "
            "ends so that Ray Train restarts the workers from the last backup",
            hint="a drain that Ray did not carry out: the restart counts against failures.max_failures",
        )

    def _pause_for_resize(self, reason: str, point: Point) -> None:
        """After the backup the growth asked for (stored: a decided backup waits for its upload), train no more:
        rank 0 tells the controller, which restarts the group at the new size from this backup."""
        epoch, step = point
        where = f"epoch {epoch + 1 if step else epoch}, step {step}"
        wait_for_writes()  # written asynchronously
        agreed(None)  # every worker has written its part of the backup before rank 0 says it is there
        if self.rank == 0:
            assert self.run is not None
            self.log.info(
                "training pauses at %s for a %s: the controller restarts the group from this backup", where, reason
            )
            resize_signal.ready(self.run, backup_name(epoch, step))
        deadline = time.monotonic() + RESIZE_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.2)
        raise PreemptionNoticeError(
            f"the controller did not restart the group within {RESIZE_WAIT_S:.0f} s of the pause for a {reason}; "
            "this attempt ends so that Ray Train restarts the workers from the backup taken for it",
            hint="the restart counts against failures.max_failures",
        )

    def _is_epoch_end(self, point: Point) -> bool:
        return point[1] == 0 and point[0] == self.epoch + 1

    def _backup(self, point: Point, reason: str, notices: tuple[NoticeSource, ...] = ()) -> None:
        epoch, step = point
        started = time.monotonic()
        if not finite_weights(self.model):  # a restore must never bring a diverged run back
            if self.rank == 0:
                where = f"at epoch {epoch + 1}, step {step}" if step else f"after epoch {epoch}"
                self.log.warning(
                    "backup %s (%s) not taken: the weights are NaN or infinite (the loss diverged); "
                    "the last backup is from before",
                    where,
                    reason,
                )
            self._last_saved = point  # settled: the next epoch's start does not try again
            return
        save_backup(
            self.model,
            self.store,
            self.job,
            rank=self.rank,
            epoch=epoch,
            step=step,
            attempt=self.attempt,
            keep=self.spec.backup.keep,
            log=self.log,
            control=self.state,
            reason=reason,
            notices=notices,
            uploader=self.uploader,
        )
        if reason != "scheduled" and self.uploader is not None:
            self.uploader.wait()  # a just-in-time, stop or final backup must be stored before anything ends
        self._last_saved = point
        if self.interval is not None:  # every backup restarts the clock, and its cost tunes the interval
            now = time.monotonic()
            upload = self.uploader.last_upload_s if self.uploader is not None else 0.0
            self.interval.backed_up(now - started, upload, at=now)
