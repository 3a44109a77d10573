"""The first-step report's trace count (``worker/tracing.tracing_count``) reads the tf.function behind
wrappers such as the bench's step clock, and says so when there is none instead of printing 0."""

from __future__ import annotations

import functools
from typing import Any

import tensorflow as tf

from bench.instrument import _TimedTrainFunction
from orchestrator.worker.tracing import tracing_count


def traced_twice() -> Any:
    @tf.function
    def step(x: tf.Tensor) -> tf.Tensor:
        return x * 2

    step(tf.constant(1.0))
    step(tf.constant([1.0, 2.0]))  # another shape: a second trace
    return step


def test_the_count_is_read_through_wrappers_and_none_without_a_tf_function() -> None:
    step = traced_twice()
    assert tracing_count(step) == 2

    @functools.wraps(step)
    def wrapped(x: tf.Tensor) -> tf.Tensor:
        return step(x)

    wrapped.__dict__.pop("experimental_get_tracing_count", None)  # wraps copies __dict__; keep only __wrapped__
    assert tracing_count(wrapped) == 2
    clock = _TimedTrainFunction(step, model=None, recorder=None)  # type: ignore[arg-type]
    assert tracing_count(clock) == 2  # the bench's step clock, which the report read as 0 before
    assert tracing_count(lambda x: x) is None
    assert tracing_count(None) is None
