"""The background writer that stores a worker's records: order, coalescing, and failures never silent."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import StoreError
from orchestrator.records import EpochRecord, Progress
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from orchestrator.worker.store_writer import StoreWriter
from tests.conftest import quickstart_raw


def progress(step: int) -> Progress:
    return Progress(attempt=1, epoch=0, epochs=1, step=step, steps_per_epoch=100, learning_rate=0.1)


def epoch(index: int) -> EpochRecord:
    return EpochRecord(epoch=index, attempt=1, learning_rate=0.1, metrics={"loss": 1.0 / (index + 1)}, seconds=1)


@pytest.fixture
def store(store_url: str) -> JobStore:
    store = JobStore(store_url)
    store.create_job(JobSpec.model_validate(quickstart_raw()))
    return store


def test_everything_handed_over_is_stored_in_order_by_close(store: JobStore) -> None:
    writer = StoreWriter(store, "quickstart", log_name="worker-0.log")
    for index in range(20):
        writer.history(epoch(index))
        writer.progress(progress(index))
        writer.log(f"line {index}\n")
    writer.close()
    assert [r.epoch for r in store.read_history("quickstart")] == list(range(20))
    stored = store.read_progress("quickstart")
    assert stored is not None and stored.step == 19  # only the newest progress matters
    assert store.read_logs("quickstart")["worker-0.log"] == "".join(f"line {i}\n" for i in range(20))


def test_a_failed_write_is_raised_by_flush_and_the_writer_keeps_going(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(JobSpec.model_validate(quickstart_raw()))
    blocker = Path(store.path("quickstart", "history.jsonl"))
    blocker.mkdir()  # a folder where the history file should be: every history write fails
    writer = StoreWriter(store, "quickstart", log_name="worker-0.log")
    writer.history(epoch(0))
    with pytest.raises(StoreError) as caught:
        writer.flush(timeout=30)
    assert str(tmp_path / "store") in caught.value.message
    blocker.rmdir()
    writer.progress(progress(5))
    with pytest.raises(StoreError):
        writer.close()  # the first error is reported again: the job must not end as if nothing was lost
    stored = store.read_progress("quickstart")
    assert stored is not None and stored.step == 5  # but the thread survived and stored the rest
