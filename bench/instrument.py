"""Step timestamps, recorded the same way in both contenders' worker processes.

Each worker process appends to its own file ``<folder>/rank<R>-pid<P>.steps``, one line per event::

    E <name> <unix time>                    e.g. build_begin, build_end, restored
    S <global step> <start> <end>           one training step (one call of Keras' train function)

The step clock wraps the model's ``train_function`` (what ``fit()`` calls once per step) instead of adding a
per-batch callback: a callback with batch hooks costs about 1 ms a step under tf_keras (docs/architecture.md,
"Per-step hooks"), a
wrapper two clock reads and one ``write``. Every line is written with ``os.write`` on an ``O_APPEND`` file, so
a SIGKILLed worker leaves every step it finished on disk. The global step of the first call is read once from
the optimizer's ``iterations`` (restored by then in both contenders: the orchestrator restores before
``fit()``, BackupAndRestore in ``on_train_begin``), and counted up from there.

This module is also the orchestrator's model builder in the bench's specs (``model: {function:
.../bench/instrument.py:build, params: {...}}``): it is loaded by file path inside the orchestrator's workers,
so it imports nothing from ``bench``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import tf_keras as keras


class StepRecorder:
    """Appends events and step timestamps for one worker process to its own file.

    Args:
        folder: where the files of one run go (created if missing).
        rank: the worker's rank in its group, part of the file name.

    Example::

        recorder = StepRecorder("/tmp/run-1/steps", rank=0)
        recorder.event("build_end")
        instrument(model, recorder)  # then every fit() step is recorded
    """

    def __init__(self, folder: str, rank: int) -> None:
        if rank < 0:
            raise ValueError(f"Invalid value for `rank`. Received: rank={rank}. Expected >= 0.")
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, f"rank{rank}-pid{os.getpid()}.steps")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def event(self, name: str, when: float | None = None) -> None:
        os.write(self._fd, f"E {name} {time.time() if when is None else when:.6f}\n".encode())

    def step(self, index: int, started: float, ended: float) -> None:
        os.write(self._fd, f"S {index} {started:.6f} {ended:.6f}\n".encode())


class _TimedTrainFunction:
    """Keras' train function, with each call's start and end recorded against the global step it trains."""

    def __init__(self, function: Any, model: Any, recorder: StepRecorder) -> None:
        self._function = function
        self.__wrapped__ = function  # what it wraps: the worker's first-step report reads its trace count there
        self._model = model
        self._recorder = recorder
        self._next: int | None = None
        self.timed = True

    def __call__(self, iterator: Any) -> Any:
        if self._next is None:  # the restored step count; read once, at the first step of this process
            self._next = int(self._model.optimizer.iterations.numpy())
        started = time.time()
        logs = self._function(iterator)
        ended = time.time()
        self._recorder.step(self._next, started, ended)
        self._next += 1
        return logs


def instrument(model: Any, recorder: StepRecorder) -> Any:
    """Record every training step of ``model`` from now on (also across ``compile``); returns the model."""
    original = model.make_train_function

    def make_train_function(force: bool = False) -> Any:
        function = original(force)
        if getattr(function, "timed", False):
            return function
        timed = _TimedTrainFunction(function, model, recorder)
        model.train_function = timed
        return timed

    model.make_train_function = make_train_function
    return model


class EpochEndClock(keras.callbacks.Callback):  # type: ignore[misc]
    """Records each epoch's end (epoch hooks only: no per-step cost); with ``restored``, also when training
    begins, which after BackupAndRestore's own ``on_train_begin`` is the moment its restore is done.

    Placed before and after BackupAndRestore, the two clocks bound its epoch-end save.
    """

    def __init__(self, recorder: StepRecorder, name: str, *, restored: bool = False) -> None:
        super().__init__()
        self._recorder, self._name, self._restored = recorder, name, restored

    def on_train_begin(self, logs: Any = None) -> None:
        if self._restored:
            self._recorder.event("restored")

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._recorder.event(self._name)


def worker_rank() -> int:
    """This process's rank in its Ray Train worker group (0 outside one)."""
    try:
        import ray.train

        return int(ray.train.get_context().get_world_rank())
    except Exception:  # not inside a Ray Train worker: a single process
        return 0


def build(input_shape: tuple[int, ...], num_classes: int, *, steps_dir: str, recipe: dict[str, Any]) -> Any:
    """The orchestrator's ``small_cnn`` recipe, built by the orchestrator's own builder, with a step clock.

    Called by the orchestrator's worker (``model.function`` in the spec) after TensorFlow is imported, the
    strategy made and the data loaded: ``build_begin`` and ``build_end`` bound the model build.
    """
    from orchestrator.recipes.models import build_model
    from orchestrator.spec import SmallCNNModel

    recorder = StepRecorder(steps_dir, worker_rank())
    recorder.event("build_begin")
    model = build_model(SmallCNNModel.model_validate(recipe), input_shape, num_classes, binary=False)
    recorder.event("build_end")
    return instrument(model, recorder)
