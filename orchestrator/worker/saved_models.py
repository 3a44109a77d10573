"""The models a job keeps in the store: the final model (``model/final.keras``) and the best one so far
(``best/model.keras``), saved by every worker (saving may run collectives) and uploaded by rank 0."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Literal

import tf_keras as keras

from orchestrator.records import ControlState, MonitorState
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from orchestrator.worker import scratch as scratch_dirs


def save_final(model: Any, store: JobStore, job: str, rank: int) -> None:
    """Every worker saves; only rank 0's file goes to the store."""
    with tempfile.TemporaryDirectory(prefix=scratch_dirs.prefix("model")) as scratch:
        local = os.path.join(scratch, "final.keras")
        model.save(local)
        if rank == 0:
            store.upload_file(job, local, "model", "final.keras")


def save_best(
    model: Any,
    store: JobStore,
    job: str,
    rank: int,
    spec: JobSpec,
    state: ControlState,
    epoch: int,
    log: logging.Logger,
) -> None:
    """Every worker saves; rank 0's file goes to ``best/model.keras``."""
    with tempfile.TemporaryDirectory(prefix=scratch_dirs.prefix("best")) as scratch:
        local = os.path.join(scratch, "model.keras")
        model.save(local)
        if rank == 0:
            store.upload_file(job, local, "best", "model.keras")
            chosen = spec.callbacks.best_model
            assert chosen is not None
            log.info(
                "best model so far: epoch %d, %s %.4g (saved to best/model.keras)",
                epoch + 1,
                chosen.monitor,
                state.best_model.best,
            )


def load_best(
    model: Any, store: JobStore, job: str, spec: JobSpec, best: MonitorState, epochs_done: int, log: logging.Logger
) -> tuple[Literal["final", "best"], int, str | None]:
    """Load the best model's weights into ``model`` where the job keeps one: (which, its epochs, why not)."""
    if spec.callbacks.best_model is None or best.epoch is None:
        return "final", epochs_done, None
    if best.epoch + 1 == epochs_done:
        return "best", epochs_done, None  # the final model is the best one
    with tempfile.TemporaryDirectory(prefix=scratch_dirs.prefix("best")) as scratch:
        local = os.path.join(scratch, "model.keras")
        try:
            store.download_file(job, local, "best", "model.keras")
            saved = keras.models.load_model(local, compile=False)
            model.set_weights(saved.get_weights())
        except Exception as exc:  # e.g. a user model whose custom layers tf_keras cannot rebuild by name
            note = f"the best model (epoch {best.epoch + 1}) could not be loaded: {type(exc).__name__}: {exc}"
            log.warning("test split: evaluating the final model instead; %s", note)
            return "final", epochs_done, note
    return "best", best.epoch + 1, None
