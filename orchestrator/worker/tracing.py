"""One trace of the train step per ``compile()``, not two: every worker start and restart pays the trace.

tf_keras builds a compiled model's metrics (``"accuracy"`` becomes a ``MeanMetricWrapper`` with its ``total``
and ``count`` variables) lazily, inside the first call of the train function. A ``tf.function`` whose first
trace creates variables is traced a second time, without variable creation, before it runs
(``polymorphic_function._initialize``): measured here, the small CNN's train step was traced twice in
0.45-0.85 s, once in 0.18-0.5 s. Building the metric and loss containers eagerly right after ``compile()``,
in the strategy's scope, with tensors shaped as the step's, leaves the trace nothing to create.

The containers choose a metric from the shapes they are built with (``accuracy`` is sparse, categorical or
binary by the rank and last dimension of the labels and outputs), so the labels given here come from the
job's own encoder and the outputs from the model's output spec: the same choice the step would make.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import tensorflow as tf
import tf_keras as keras


def build_compiled_containers(model: Any, labels: tf.Tensor, log: logging.Logger) -> bool:
    """Build ``model``'s compiled loss and metrics for outputs of its spec and ``labels`` (one encoded batch).

    Call in the strategy's scope, after ``compile()``. Returns whether they were built; a model whose outputs
    are not known before it is called (some subclassed models) or has several is left to tf_keras, which
    builds them in the first trace (logged at debug level: it only costs that trace once more).
    """
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1 or outputs[0].shape.rank is None:
        log.debug("compiled metrics built at the first step: the model's single output spec is not known")
        return False
    output = outputs[0]
    predicted = tf.zeros([int(labels.shape[0]), *output.shape[1:]], dtype=output.dtype)
    model.compiled_loss.build(predicted)
    model.compiled_metrics.build(predicted, labels)
    return True


class FirstStepReport(keras.callbacks.Callback):
    """Logs, once per attempt, how long the last part of the start took: from the restored state to the end of
    the first training step, split into set-up (writers, data streams, callbacks) and the first step itself
    (the train step's trace, its first run and the first collective), with how often the step was traced."""

    def __init__(self, log: logging.Logger, attempt: int, restored_at: float) -> None:
        super().__init__()
        self._log = log
        self._attempt = attempt
        self._restored_at = restored_at
        self._began: float | None = None
        self.reported = False

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._began is None:
            self._began = time.time()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.reported or self._began is None:
            return
        self.reported = True
        now = time.time()
        traced = tracing_count(getattr(self.model, "train_function", None))
        self._log.info(
            "attempt %d: first training step done %.2f s after the restore (set-up %.2f s, first step %.2f s; "
            "train step %s)",
            self._attempt,
            now - self._restored_at,
            self._began - self._restored_at,
            now - self._began,
            f"traced {traced} time(s)" if traced is not None else "not a tf.function: its traces are not counted",
        )


def tracing_count(function: Any) -> int | None:
    """How often the ``tf.function`` behind ``function`` was traced, looking through wrappers that name what they
    wrap in ``__wrapped__`` (``functools.wraps``, the bench's step clock); ``None`` when none is a tf.function."""
    for _ in range(8):  # a wrapper of a wrapper, not a cycle
        counter = getattr(function, "experimental_get_tracing_count", None)
        if counter is not None:
            return int(counter())
        function = getattr(function, "__wrapped__", None)
        if function is None:
            return None
    return None
