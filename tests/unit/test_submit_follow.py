"""The follow loop ``submit --follow`` and ``watch`` share (``cli_live.follow_job``), against a store the test
moves on while the loop waits; ``submit --follow`` itself on a Ray cluster: tests/integration/test_submit.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import cli_live
from orchestrator.records import EpochRecord, Progress
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.views import SubmitOutput, WatchEvent
from tests.conftest import quickstart_raw


@pytest.fixture
def moving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[JobStore, list[float]]:
    """A RUNNING job that finishes an epoch at the first wait, another at the second, and FAILS at the third."""
    store = JobStore(str(tmp_path / "store"))
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": "far", "epochs": 3}))
    store.set_status("far", JobStatus.RUNNING, attempt=1)
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) <= 2:
            epoch = len(waits) - 1
            store.append_history(
                "far", EpochRecord(epoch=epoch, attempt=1, learning_rate=0.001, metrics={"loss": 1.0}, seconds=2.0)
            )
            store.write_progress(
                "far", Progress(attempt=1, epoch=epoch + 1, epochs=3, step=0, steps_per_epoch=10, learning_rate=0.001)
            )
        else:
            store.set_status("far", JobStatus.FAILED, reason="rank 0: boom")

    monkeypatch.setattr(cli_live.time, "sleep", wait)
    return store, waits


def test_following_prints_each_epoch_once_then_the_end_and_returns_the_final_state(
    moving: tuple[JobStore, list[float]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, waits = moving
    state = cli_live.follow_job(store, "far", as_json=False)
    assert state.status is JobStatus.FAILED and state.reason == "rank 0: boom"
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" lr ")[0] for line in lines[:-1]] == ["far: epoch 1/3", "far: epoch 2/3"]
    assert lines[-1] == "far ended FAILED: rank 0: boom"
    assert waits == [cli_live.FOLLOW_SECONDS] * 3


def test_following_as_json_is_one_object_per_line_ending_with_the_end(
    moving: tuple[JobStore, list[float]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, _ = moving
    cli_live.follow_job(store, "far", as_json=True)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events if e["event"] != "progress"] == ["state", "epoch", "epoch", "state", "end"]
    assert events[-1]["state"]["status"] == "FAILED"


def test_submit_follow_json_starts_with_the_submission_as_one_line() -> None:
    submitted = SubmitOutput(name="far", submission_id="far-1", address="http://h:8265", store="gs://b/o", status=None)
    line = WatchEvent(event="submitted", job="far", submission=submitted).model_dump_json()
    assert "\n" not in line
    assert json.loads(line)["submission"]["submission_id"] == "far-1"
    assert submitted.store_option() == " --store gs://b/o"
