"""Compiling the job's model for a phase (its trainable layers, a fresh optimizer, the metrics), and switching
to a later phase at its first epoch."""

from __future__ import annotations

import logging
from typing import Any

import tensorflow as tf
import tf_keras as keras

from orchestrator.recipes import datasets
from orchestrator.recipes.models import configure_phase
from orchestrator.records import ControlState, MonitorState, PlateauState
from orchestrator.spec import JobSpec, KerasData, NpzData, OptimizerSpec
from orchestrator.worker import devices
from orchestrator.worker.tracing import build_compiled_containers


def compile_phase(model: Any, spec: JobSpec, phase: int, labels: Any, log: logging.Logger) -> str:
    """Set what trains in ``phase`` and compile with that phase's optimizer (a fresh one); call in scope.
    ``labels``: one encoded batch's labels, for the compiled metrics."""
    described = configure_phase(model, spec, phase)
    # the optimizer's and compile's variables start from constants, the same on every worker: no broadcast
    with devices.local_initial_values(tf.distribute.get_strategy(), log):
        optimizer = optimizer_for(spec.phase_optimizer(phase))
        model.compile(
            optimizer=optimizer,
            loss=spec.loss,
            metrics=metrics_for(spec),
            steps_per_execution=spec.steps_per_execution,
            jit_compile=spec.jit_compile,
        )  # under mixed_float16, tf_keras wraps the optimizer in a LossScaleOptimizer (model.optimizer)
        optimizer.build(model.trainable_variables)
        build_compiled_containers(model, labels, log)  # the train step is traced once, not twice
    if spec.jit_compile:
        log.info(
            "train step compiled with XLA (jit_compile)"
            if model.jit_compile
            else "jit_compile: true, but tf_keras turned XLA off for this model or strategy"
        )
    return described


def switch_phase(
    model: Any,
    strategy: tf.distribute.Strategy,
    spec: JobSpec,
    phase: int,
    state: ControlState,
    epoch: int,
    labels: Any,
    log: logging.Logger,
) -> ControlState:
    """Start ``phase`` at ``epoch``: recompile with its trainable layers and a fresh optimizer, its LR, and
    new plateau/early-stopping counters (a new segment). The best-model record carries over."""
    with strategy.scope():
        described = compile_phase(model, spec, phase, labels, log)
    chosen = spec.phase_optimizer(phase)
    log.info(
        "phase %d/%d '%s' starts at epoch %d: %s; recompiled with a fresh %s optimizer at lr %g (the previous "
        "phase's optimizer state is dropped: its slots belong to other trainable variables)",
        phase + 1,
        len(spec.phases),
        spec.phases[phase].name,
        epoch + 1,
        described,
        chosen.name,
        chosen.learning_rate,
    )
    return state.model_copy(
        update={
            "phase": phase,
            "learning_rate": chosen.learning_rate,
            "segment": state.segment + 1,
            "manual": False,
            "plateau": PlateauState(),
            "early_stopping": MonitorState(),
        }
    )


def input_shape(data: datasets.Dataset, spec: JobSpec) -> tuple[int, ...]:
    resize = spec.data.resize if isinstance(spec.data, NpzData | KerasData) else None
    shape = data.input_shape
    return (*resize, shape[-1]) if resize else shape


def optimizer_for(chosen: OptimizerSpec) -> Any:
    options = chosen.model_dump(exclude={"name"}, exclude_none=True)
    classes = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "adagrad": keras.optimizers.Adagrad,
        "rmsprop": keras.optimizers.RMSprop,
        "nadam": keras.optimizers.Nadam,
    }
    return classes[chosen.name](**options)


def metrics_for(spec: JobSpec) -> list[Any]:
    made = {
        "accuracy": lambda: "accuracy",
        "auc": lambda: keras.metrics.AUC(name="auc"),
        "precision": lambda: keras.metrics.Precision(name="precision"),
        "recall": lambda: keras.metrics.Recall(name="recall"),
    }
    return [made[name]() for name in spec.metrics]
