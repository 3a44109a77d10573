"""After training: the test split's evaluation of the model the job keeps, and this worker's summary of its
weights (``workers.jsonl``: every replica must end with the same ones)."""

from __future__ import annotations

import hashlib
import logging
import socket
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from orchestrator.recipes import datasets
from orchestrator.records import Evaluation, MonitorState, WorkerSummary
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from orchestrator.worker.pipeline import EpochPlan, IteratorReaper, distributed_dataset, steps_per_epoch
from orchestrator.worker.saved_models import load_best


def evaluate_test(
    model: Any,
    strategy: tf.distribute.Strategy,
    data: datasets.Dataset,
    encode: Any,
    epochs_done: int,
    best: MonitorState,
    *,
    spec: JobSpec,
    store: JobStore,
    job: str,
    rank: int,
    reaper: IteratorReaper,
    log: logging.Logger,
) -> None:
    """The model the job keeps on the held-out test split (if the data has one), on every worker; rank 0
    records it. That is the best model where ``callbacks.best_model`` keeps one (its weights are loaded into
    ``model``, so call this after the final model is saved), else the final model."""
    if data.x_test is None or data.y_test is None:
        return
    steps = steps_per_epoch(len(data.x_test), spec.batch_size)
    if not steps:
        log.warning(
            "test evaluation skipped: %d test examples is less than one global batch of %d",
            len(data.x_test),
            spec.batch_size,
        )
        return
    evaluated, model_epoch, note = load_best(model, store, job, spec, best, epochs_done, log)
    results = _evaluate(model, strategy, (data.x_test, data.y_test), encode, steps, spec, reaper)
    if rank == 0:
        evaluation = Evaluation(
            examples=steps * spec.batch_size,
            metrics={key: float(value) for key, value in results.items()},
            epochs_trained=epochs_done,
            model=evaluated,
            model_epoch=model_epoch,
            note=note,
        )
        _record(evaluation, store, job, log)


def _evaluate(
    model: Any,
    strategy: tf.distribute.Strategy,
    test: tuple[np.ndarray, np.ndarray],
    encode: Any,
    steps: int,
    spec: JobSpec,
    reaper: IteratorReaper,
) -> dict[str, Any]:
    stream = distributed_dataset(
        strategy,
        *test,
        global_batch=spec.batch_size,
        seed=spec.seed,
        plan=EpochPlan(0, 1),
        shuffle=False,
        encode=encode,
    )
    try:
        results: dict[str, Any] = model.evaluate(reaper.watch(stream), steps=steps, verbose=0, return_dict=True)
    finally:
        reaper.reap()
    return results


def _record(evaluation: Evaluation, store: JobStore, job: str, log: logging.Logger) -> None:
    store.write_evaluation(job, evaluation)
    log.info(
        "test split (%d examples), %s model (epoch %d): %s",
        evaluation.examples,
        evaluation.model,
        evaluation.model_epoch,
        "  ".join(f"{k} {v:.4f}" for k, v in evaluation.metrics.items()),
    )


def summary(model: Any, rank: int, world_size: int, epochs: int) -> WorkerSummary:
    flat = np.concatenate([np.asarray(w, dtype=np.float32).ravel() for w in model.get_weights()])
    return WorkerSummary(
        rank=rank,
        world_size=world_size,
        hostname=socket.gethostname(),
        epochs_trained=epochs,
        weights_sha256=hashlib.sha256(flat.tobytes()).hexdigest(),
        weights_norm=float(np.linalg.norm(flat.astype(np.float64))),
        learning_rate=float(keras.backend.get_value(model.optimizer.learning_rate)),
    )
