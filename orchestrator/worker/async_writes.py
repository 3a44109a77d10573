"""Backups written asynchronously: the step waits only for a copy of the variables in host memory.

TensorFlow's async checkpoint (``CheckpointOptions(experimental_enable_async_checkpoint=True)``): ``write``
copies every variable (model, optimizer slots, counters) to host memory, which is all the step waits for, and a
thread of TensorFlow's writes the files. Rank 0's uploader waits for the files (``written``) before it hashes
and stores them; another rank's copy goes to the node's cache (``keep_when_written``) once on disk. Before the
workers agree that a backup is there, and at an attempt's end, ``wait_for_writes``.
"""

from __future__ import annotations

import os
import shutil
import threading
from typing import Any

import tensorflow as tf

from orchestrator.errors import StoreError
from orchestrator.worker import backup_cache

CHECKPOINT_PREFIX = "state"  # the checkpoint files in a backup folder: state.index, state.data-*


def track(keeper: threading.Thread) -> None:
    """A thread that moves a written backup into the node's cache (``wait_for_writes`` joins it)."""
    _keepers[:] = [t for t in _keepers if t.is_alive()] + [keeper]


def checkpoint_of(model: Any) -> tf.train.Checkpoint:
    """A new checkpoint of ``model`` and its optimizer (what a backup holds)."""
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer)


# Backups are written asynchronously (TensorFlow's async checkpoint): ``write`` copies every variable to host
# memory, which is all the step waits for, and a thread of TensorFlow's writes the files. One checkpoint object
# per model and optimizer in this process, so its host copies are made once and reused.
ASYNC = tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)
_writers: dict[tuple[int, int], tf.train.Checkpoint] = {}
_keepers: list[threading.Thread] = []


def writer_of(model: Any) -> tf.train.Checkpoint:
    key = (id(model), id(model.optimizer))  # both stay referenced by the checkpoint: their ids are not reused
    checkpoint = _writers.get(key)
    if checkpoint is None:  # a new model or optimizer (a phase's): the previous writer finishes first
        wait_for_writes()
        _writers.clear()
        checkpoint = _writers[key] = checkpoint_of(model)
    return checkpoint


def written(checkpoint: tf.train.Checkpoint, prefix: str) -> None:
    """Until the asynchronous write to ``prefix`` is on disk (its index is written last); an error if it failed."""
    checkpoint.sync()
    if not os.path.exists(prefix + ".index"):
        raise StoreError(f"the checkpoint write to {prefix} failed (no index file after it finished)")


def wait_for_writes() -> None:
    """Until this process's backups are on its disk (and a non-zero rank's copy in the node's cache): before the
    workers agree that a backup is there, and before the attempt ends."""
    for checkpoint in _writers.values():
        checkpoint.sync()
    while _keepers:
        _keepers.pop().join()


def keep_when_written(checkpoint: tf.train.Checkpoint, scratch: str, name: str, url: str, job: str, rank: int) -> None:
    try:
        written(checkpoint, os.path.join(scratch, CHECKPOINT_PREFIX))
    except Exception:  # only the node's shortcut is lost: restores download rank 0's stored copy
        shutil.rmtree(scratch, ignore_errors=True)
        return
    backup_cache.keep(scratch, name, url, job, rank)
