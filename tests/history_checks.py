""" "Each epoch exactly once", checked from what cannot hide a repeat.

``JobStore.read_history`` keeps one line per epoch (the last one that counts), so a list of its epochs fails when
an epoch is missing, never when one was trained twice. This reads every line ever written instead, per branch
and attempt, against where each attempt says it restored from; and the final model's optimizer step count, which
counts every global batch applied to the weights it ended with.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from orchestrator.records import EpochRecord
from orchestrator.store import JobStore

BACKUP_NAME = re.compile(r"e(\d+)-s(\d+)(?:-b\d+)?")  # a backup's or a snapshot's name: its epoch and step


def final_model(store: JobStore, job: str) -> Any:
    import tf_keras as keras

    return keras.models.load_model(store.url_of(job, "model", "final.keras"))


def assert_each_epoch_trained_once(
    store: JobStore, job: str, epochs: int, steps_per_epoch: int | None = None, *, model: Any = None
) -> list[EpochRecord]:
    """Every epoch in ``range(epochs)`` trained once on the live branch, none twice by one attempt, each attempt
    going on from exactly the point it restored; with ``steps_per_epoch``, the final model (``model``, or the
    job's ``final.keras``) has applied exactly ``epochs * steps_per_epoch`` global batches. The live history."""
    attempts = {a.attempt: a for a in store.read_attempts(job)}
    for attempt in attempts.values():
        if attempt.restored_from is None:
            assert (attempt.start_epoch, attempt.start_step) == (0, 0), attempt
        else:
            match = BACKUP_NAME.fullmatch(attempt.restored_from)
            assert match, attempt.restored_from
            assert (int(match[1]), int(match[2])) == (attempt.start_epoch, attempt.start_step), attempt
    lines: dict[tuple[int, int], list[EpochRecord]] = defaultdict(list)
    for record in store.read_history_lines(job):
        lines[(record.branch, record.attempt)].append(record)
    for (branch, number), records in lines.items():
        start = attempts[number]
        trained = [r.epoch for r in records]
        expected = list(range(start.start_epoch, start.start_epoch + len(records)))
        assert trained == expected, (
            f"branch {branch}, attempt {number} trained epochs {trained}: it restored epoch {start.start_epoch}, "
            "so it must train each epoch from there once, in order"
        )
        assert [r.first_step for r in records] == [start.start_step] + [0] * (len(records) - 1), (branch, number)
    history = store.read_history(job)
    assert [r.epoch for r in history] == list(range(epochs))
    if steps_per_epoch is not None:
        model = model if model is not None else final_model(store, job)
        applied = int(model.optimizer.iterations.numpy())
        assert applied == epochs * steps_per_epoch, (
            f"the final model applied {applied} global batches, not {epochs} epochs x {steps_per_epoch}: a batch "
            "trained twice or skipped, or the optimizer's state not the one the resume should have gone on from"
        )
    return history
