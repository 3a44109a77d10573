"""The integration tests' "each epoch trained exactly once" check fails on the records a repeat leaves.

``JobStore.read_history`` keeps one line per epoch, so its epochs read 0..N-1 even when an attempt trained one of
them twice; ``tests.history_checks.assert_each_epoch_trained_once`` must not be fooled by that. Each case writes
what a worker group would (its attempt, then one history line per epoch) into a real store on a local folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.records import EpochRecord
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw
from tests.history_checks import assert_each_epoch_trained_once

JOB = "quickstart"


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    store = JobStore(f"file://{tmp_path / 'store'}")
    store.create_job(JobSpec.model_validate(quickstart_raw()))
    return store


def attempt(
    store: JobStore, epochs: list[int], *, restored_from: str | None = None, start: tuple[int, int] = (0, 0)
) -> None:
    """A worker group that restored ``restored_from`` (which says ``start``) and ended ``epochs``, in order."""
    record = store.start_attempt(JOB, start_epoch=start[0], start_step=start[1], restored_from=restored_from)
    for index, epoch in enumerate(epochs):
        first_step = start[1] if index == 0 else 0
        line = EpochRecord(
            epoch=epoch,
            attempt=record.attempt,
            learning_rate=1e-3,
            metrics={"loss": 1.0},
            seconds=1.0,
            first_step=first_step,
        )
        store.append_history(JOB, line)


def model_after(steps: int) -> Any:
    """A real compiled model whose optimizer has applied ``steps`` batches."""
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(steps)
    return model


def test_a_run_killed_and_resumed_from_its_backup_passes(store: JobStore) -> None:
    attempt(store, [0, 1, 2])  # killed inside epoch 3, after the backup at the end of epoch 2 (e00003)
    attempt(store, [3, 4, 5], restored_from="e00003-s0000000", start=(3, 0))
    history = assert_each_epoch_trained_once(store, JOB, 6)
    assert [r.attempt for r in history] == [1, 1, 1, 2, 2, 2]


def test_an_epoch_trained_again_after_a_restore_point_is_not_a_repeat(store: JobStore) -> None:
    attempt(store, [0, 1, 2])  # epoch 2 ended, but its backup never completed: it is trained again from e00002
    attempt(store, [2, 3], restored_from="e00002-s0000000", start=(2, 0))
    assert_each_epoch_trained_once(store, JOB, 4)


def test_an_epoch_trained_twice_by_one_attempt_fails_though_read_history_hides_it(store: JobStore) -> None:
    attempt(store, [0, 1, 1, 2, 3])  # epoch 1 trained twice on one branch, without any restore
    assert [r.epoch for r in store.read_history(JOB)] == [0, 1, 2, 3]  # what the old check looked at: passes
    with pytest.raises(AssertionError, match=r"attempt 1 trained epochs \[0, 1, 1, 2, 3\]"):
        assert_each_epoch_trained_once(store, JOB, 4)


def test_an_attempt_that_trains_from_before_its_restore_point_fails(store: JobStore) -> None:
    attempt(store, [0, 1, 2, 3])
    attempt(store, [3, 4, 5], restored_from="e00004-s0000000", start=(4, 0))  # restored e4, then trained epoch 3
    with pytest.raises(AssertionError, match=r"attempt 2 trained epochs \[3, 4, 5\]: it restored epoch 4"):
        assert_each_epoch_trained_once(store, JOB, 6)


def test_an_attempt_whose_start_is_not_the_backup_it_names_fails(store: JobStore) -> None:
    attempt(store, [0, 1, 2])
    attempt(store, [2, 3], restored_from="e00003-s0000000", start=(2, 0))  # says e00003, trained from epoch 2
    with pytest.raises(AssertionError, match="e00003-s0000000"):
        assert_each_epoch_trained_once(store, JOB, 4)


def test_a_mid_epoch_resume_must_start_at_its_restored_step(store: JobStore) -> None:
    attempt(store, [0])
    attempt(store, [1, 2], restored_from="e00001-s0000020", start=(1, 20))
    assert_each_epoch_trained_once(store, JOB, 3)
    store.append_history(
        JOB, EpochRecord(epoch=3, attempt=2, learning_rate=1e-3, metrics={"loss": 1.0}, seconds=1.0, first_step=5)
    )
    with pytest.raises(AssertionError):  # an epoch after the first of an attempt starts at step 0
        assert_each_epoch_trained_once(store, JOB, 4)


def test_the_final_model_must_have_applied_exactly_every_epochs_batches(store: JobStore) -> None:
    attempt(store, [0, 1, 2])
    assert_each_epoch_trained_once(store, JOB, 3, 64, model=model_after(3 * 64))
    with pytest.raises(AssertionError):  # one batch applied twice (or a resume that re-ran a step)
        assert_each_epoch_trained_once(store, JOB, 3, 64, model=model_after(3 * 64 + 1))
    with pytest.raises(AssertionError):  # one batch skipped
        assert_each_epoch_trained_once(store, JOB, 3, 64, model=model_after(3 * 64 - 1))
