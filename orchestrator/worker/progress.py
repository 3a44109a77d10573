"""ProgressCallback: rank 0 reports where training is (about once a second) and one history line per epoch.

Per-step cost is kept to a clock read (docs/architecture.md, "Per-step hooks": any per-batch hook that touches
TensorFlow costs about 1 ms a step): logs stay tensors (``_supports_tf_logs``) and are read only when a report
is due, and with ``steps_per_execution`` > 1 the hook runs once per executed chunk.

Under MultiWorkerMirroredStrategy across workers, a batch's logs are not what ``fit()`` reports: each replica
computes every metric over all replicas (tf_keras reads the sync-on-read metric variables in a
``variable_sync_on_read_context``), and the train function then SUMs the replicas' results
(``Model.distribute_reduction_method`` "auto" is "sum" off TPUs; ``reduce_per_replica``), so with 2 workers
the loss and accuracy of a batch came doubled (``accuracy 1.997``). ``batch_metrics`` divides by the number of
replicas, which gives back exactly the running value ``fit()`` reports at the epoch's end. One worker's
MirroredStrategy computes them in a ``merge_call`` and hands over one value, so there is nothing to undo.
"""

from __future__ import annotations

import math
import time
from typing import Any

import tensorflow as tf
import tf_keras as keras

from orchestrator.records import EpochRecord, Progress
from orchestrator.worker.store_writer import StoreWriter


class ProgressCallback(keras.callbacks.Callback):
    """Hands progress and epoch records to a StoreWriter (rank 0 only).

    Args:
        writer: where records go (written in the background).
        attempt: the job's attempt number, recorded with every epoch.
        epochs: the job's total epochs.
        steps_per_epoch: global steps in an epoch.
        global_batch: examples per global step, for throughput.
        interval_s: minimum seconds between two progress reports within an epoch.
        control: the TrainingControl; when given, each epoch's LR, segment and branch come from it.
        tensorboard: a TensorBoardWriter that gets each epoch's scalars.
        tensorboard_every: also give it a batch's scalars every this many global steps.
        plots: a PlotWriter, told when an epoch is done.
    """

    def __init__(
        self,
        writer: StoreWriter,
        *,
        attempt: int,
        epochs: int,
        steps_per_epoch: int,
        global_batch: int,
        first_step: int = 0,
        interval_s: float = 1.0,
        control: Any = None,
        tensorboard: Any = None,
        tensorboard_every: int | None = None,
        plots: Any = None,
    ) -> None:
        super().__init__()
        if interval_s <= 0:
            raise ValueError(f"Invalid value for `interval_s`. Received: interval_s={interval_s}. Expected > 0.")
        self._supports_tf_logs = True
        self._writer = writer
        self._attempt = attempt
        self._epochs = epochs
        self._steps = steps_per_epoch
        self._global_batch = global_batch
        self._interval = interval_s
        self._first_step = first_step  # a resumed partial epoch's fit starts this many steps in
        self._control = control  # the TrainingControl, which knows the epoch's LR, segment and branch
        self._tensorboard = tensorboard  # a TensorBoardWriter, or None
        self._tensorboard_every = tensorboard_every
        self._plots = plots  # a PlotWriter, or None
        self._epoch = 0
        self._epoch_started = 0.0
        self._last_report = 0.0
        self._restored_lr: float | None = None  # a resumed partial epoch's LR before its restore point
        self._step_lr: float | None = None  # the LR the epoch's latest step trained with

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # A resumed partial epoch: its earlier steps trained at the LR in force at the restored backup, which is
        # the controller's before it applies this fit's first decision (a resume --lr, say).
        if self._first_step and self._control is not None:
            self._restored_lr = float(self._control.state.learning_rate)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = int(epoch)
        self._epoch_started = self._last_report = time.monotonic()
        self._step_lr = None

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._control is not None:  # a Python float: the LR this step trained with (the controller, which
            self._step_lr = self._control.state.learning_rate  # runs after this, may change it for the next)
        every = self._tensorboard_every
        if every and self._tensorboard is not None:
            step = self._first_step + int(batch) + 1
            global_step = self._epoch * self._steps + step
            if global_step % every == 0:
                self._tensorboard.step(global_step, self.current_learning_rate(), self.batch_metrics(logs))
        now = time.monotonic()
        if now - self._last_report < self._interval:
            return
        self._last_report = now
        step = self._first_step + int(batch) + 1  # tf_keras may pass numpy.int64 (docs/architecture.md)
        self._writer.progress(self._progress(step, self.batch_metrics(logs), now))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        metrics = _floats(logs)
        first = self._control.epoch_learning_rate if self._control else self.current_learning_rate()
        if self._first_step and self._restored_lr is not None:
            first = self._restored_lr
        last = self._step_lr if self._step_lr is not None else first
        self._writer.history(
            EpochRecord(
                epoch=int(epoch),
                attempt=self._attempt,
                learning_rate=first,
                end_learning_rate=None if math.isclose(last, first, rel_tol=1e-6) else last,
                metrics=metrics,
                seconds=round(now - self._epoch_started, 4),
                first_step=self._first_step,
                segment=self._control.epoch_segment if self._control else 0,
                branch=self._control.state.branch if self._control else 0,
                phase=self._phase_name(),
            )
        )
        self._writer.progress(self._progress(self._steps, metrics, now))
        if self._tensorboard is not None:
            learning_rate = self._control.epoch_learning_rate if self._control else self.current_learning_rate()
            self._tensorboard.epoch(int(epoch), learning_rate, metrics)
        if self._plots is not None:
            self._plots.epoch_done()
        self._first_step = 0  # a partial epoch is the first and only epoch of its fit

    def _phase_name(self) -> str | None:
        control = self._control
        return control.spec.phases[control.state.phase].name if control and control.spec.phases else None

    def current_learning_rate(self) -> float:
        return float(keras.backend.get_value(self.model.optimizer.learning_rate))

    def batch_metrics(self, logs: dict[str, Any] | None) -> dict[str, float]:
        """A batch's logs as ``fit()`` reports them at the epoch's end: the running metrics over every replica."""
        values = _floats(logs)
        strategy = self.model.distribute_strategy
        summed = (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()  # tf_keras' own test (_collective_all_reduce_multi_worker)
            and self.model.distribute_reduction_method in ("auto", "sum")
        )
        if not summed:
            return values
        replicas = strategy.num_replicas_in_sync
        return {key: value / replicas for key, value in values.items()}

    def _progress(self, step: int, metrics: dict[str, float], now: float) -> Progress:
        elapsed = now - self._epoch_started
        return Progress(
            attempt=self._attempt,
            epoch=self._epoch,
            epochs=self._epochs,
            step=step,
            steps_per_epoch=self._steps,
            learning_rate=self.current_learning_rate(),
            metrics=metrics,
            samples_per_second=round((step - self._first_step) * self._global_batch / elapsed, 2)
            if elapsed > 0
            else None,
            replicas=self.model.distribute_strategy.num_replicas_in_sync,
        )


def _floats(logs: dict[str, Any] | None) -> dict[str, float]:
    return {key: float(value) for key, value in (logs or {}).items()}
