"""TensorBoard event files for a job, in the store's ``tensorboard/`` folder, continuous across attempts.

Rank 0 writes one event file per attempt with ``tf.summary`` to node-local scratch and copies it to the store
after each epoch (in a background thread; the file only grows, so the newest copy holds everything). Steps are
epochs done (1-based) for per-epoch scalars and the job's global step for per-step ones, so a resumed attempt
continues the curves instead of starting again at 0. ``tensorboard --logdir <store>/jobs/<job>/tensorboard``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading

import tensorflow as tf

from orchestrator.errors import OrchestratorError
from orchestrator.store import JobStore
from orchestrator.worker import scratch as scratch_dirs


class TensorBoardWriter:
    def __init__(self, store: JobStore, job: str, attempt: int, log: logging.Logger) -> None:
        self._store, self._job, self._log = store, job, log
        self._scratch = scratch_dirs.make(f"tensorboard-a{attempt}")
        self._writer = tf.summary.create_file_writer(self._scratch, filename_suffix=f".attempt-{attempt}")
        self._pending = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tensorboard-upload", daemon=True)
        self._thread.start()

    def epoch(self, epoch: int, learning_rate: float, metrics: dict[str, float]) -> None:
        """Scalars of 0-based ``epoch``, at step ``epoch + 1`` (epochs done)."""
        with self._writer.as_default(step=epoch + 1):
            tf.summary.scalar("learning_rate", learning_rate)
            for name, value in metrics.items():
                tf.summary.scalar(name, value)
        self._writer.flush()
        self._pending.set()

    def step(self, global_step: int, learning_rate: float, metrics: dict[str, float]) -> None:
        """A batch's scalars under ``step/`` at the job's global step (epochs x steps per epoch + step), so the
        per-step curves continue across restarts too."""
        with self._writer.as_default(step=global_step):
            tf.summary.scalar("step/learning_rate", learning_rate)
            for name, value in metrics.items():
                tf.summary.scalar(f"step/{name}", value)
        self._writer.flush()
        self._pending.set()  # copied now (one upload at a time): a kill before the epoch's end loses none of them

    def close(self) -> None:
        self._writer.close()
        self._pending.set()
        self._closed.set()
        self._thread.join(timeout=60)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _run(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            self._upload()
            if self._closed.is_set():
                return

    def _upload(self) -> None:
        for name in os.listdir(self._scratch):
            try:
                self._store.upload_file(self._job, os.path.join(self._scratch, name), "tensorboard", name)
            except (OrchestratorError, OSError) as exc:  # curves are worth a warning, not the job
                self._log.warning("tensorboard: could not copy %s to the store: %s", name, exc)
