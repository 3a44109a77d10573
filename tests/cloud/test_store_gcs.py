"""The job store on gs:// against a real GCS JSON API server (gcp-storage-emulator on 127.0.0.1), through gcsfs.

The store gets a plain ``gs://bucket/prefix`` URL, as a user would pass with --store. What the store says it wrote is
checked against the server itself (its JSON API, read without gcsfs), so a client-side cache cannot fake a pass.

gcsfs is imported inside the tests, never at module level: collecting this file must not import it before the
``gcs_environment`` fixture has set GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (see conftest.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from orchestrator.errors import InvalidTransitionError, JobExistsError, JobNotFoundError, StoreError
from orchestrator.records import EpochRecord, JobRecord, JobState, Progress, WorkerSummary
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.cloud.conftest import Emulator
from tests.conftest import quickstart_raw


def make_spec(name: str = "quickstart") -> JobSpec:
    return JobSpec.model_validate({**quickstart_raw(), "name": name})


def epoch(number: int) -> EpochRecord:
    return EpochRecord(epoch=number, attempt=1, learning_rate=0.1, metrics={"loss": 1.0 / (number + 1)}, seconds=1)


def test_created_job_is_stored_in_the_bucket_with_status_pending(
    gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str
) -> None:
    import gcsfs.core

    store = JobStore(gcs_store_url)
    assert type(store.fs) is gcsfs.core.GCSFileSystem and not store.is_local
    record = store.create_job(make_spec(), spec_path="/somewhere/quickstart.yaml")
    assert store.load_job("quickstart") == record
    assert record.spec == make_spec()
    assert store.read_state("quickstart").status is JobStatus.PENDING
    assert store.job_names() == ["quickstart"]
    # The server holds exactly these objects, and they decode to what the store returned.
    job_dir = f"{gcs_prefix}/jobs/quickstart"
    assert gcs_emulator.object_names(gcs_prefix) == [f"{job_dir}/job.json", f"{job_dir}/status.json"]
    assert JobRecord.model_validate_json(gcs_emulator.object_bytes(f"{job_dir}/job.json")) == record
    assert JobState.model_validate_json(gcs_emulator.object_bytes(f"{job_dir}/status.json")).status is (
        JobStatus.PENDING
    )


def test_second_job_with_the_same_name_is_refused_and_the_first_is_untouched(
    gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str
) -> None:
    store = JobStore(gcs_store_url)
    first = store.create_job(make_spec())
    stored_before = gcs_emulator.object_bytes(f"{gcs_prefix}/jobs/quickstart/job.json")
    with pytest.raises(JobExistsError) as caught:
        store.create_job(make_spec())
    assert gcs_store_url in caught.value.message
    assert "--name" in (caught.value.hint or "")
    assert store.load_job("quickstart") == first
    assert gcs_emulator.object_bytes(f"{gcs_prefix}/jobs/quickstart/job.json") == stored_before


def test_status_follows_the_allowed_transitions_only(
    gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str
) -> None:
    store = JobStore(gcs_store_url)
    store.create_job(make_spec())
    store.set_status("quickstart", JobStatus.RUNNING, attempt=1)
    assert store.read_state("quickstart").status is JobStatus.RUNNING
    store.set_status("quickstart", JobStatus.SUCCEEDED)
    with pytest.raises(InvalidTransitionError) as caught:
        store.set_status("quickstart", JobStatus.RUNNING)
    assert "job 'quickstart' is SUCCEEDED; it cannot become RUNNING" in caught.value.message
    state = store.read_state("quickstart")
    assert (state.status, state.attempt) == (JobStatus.SUCCEEDED, 1)
    on_server = JobState.model_validate_json(gcs_emulator.object_bytes(f"{gcs_prefix}/jobs/quickstart/status.json"))
    assert (on_server.status, on_server.attempt) == (JobStatus.SUCCEEDED, 1)


def test_history_keeps_every_epoch_in_order(gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str) -> None:
    store = JobStore(gcs_store_url)
    store.create_job(make_spec())
    assert store.read_history("quickstart") == []
    for number in range(5):
        store.append_history("quickstart", epoch(number))
    history = store.read_history("quickstart")
    assert [record.epoch for record in history] == [0, 1, 2, 3, 4]
    assert history[4].metrics == {"loss": 0.2}
    lines = gcs_emulator.object_bytes(f"{gcs_prefix}/jobs/quickstart/history.jsonl").decode().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3, 4]


def test_progress_is_absent_until_written_then_shows_the_latest_write(
    gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str
) -> None:
    store = JobStore(gcs_store_url)
    store.create_job(make_spec())
    assert store.read_progress("quickstart") is None
    first = Progress(attempt=1, epoch=2, epochs=6, step=10, steps_per_epoch=64, learning_rate=0.01)
    store.write_progress("quickstart", first)
    assert store.read_progress("quickstart") == first
    latest = first.model_copy(update={"step": 11, "metrics": {"loss": 0.5}})
    store.write_progress("quickstart", latest)
    assert store.read_progress("quickstart") == latest
    assert Progress.model_validate_json(gcs_emulator.object_bytes(f"{gcs_prefix}/jobs/quickstart/progress.json")) == (
        latest
    )


def test_logs_are_appended_and_read_back_per_file(gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str) -> None:
    store = JobStore(gcs_store_url)
    store.create_job(make_spec())
    assert store.read_logs("quickstart") == {}
    store.append_log("quickstart", "driver.log", "one\n")
    store.append_log("quickstart", "driver.log", "two\n")
    store.write_log("quickstart", "worker-0.log", "hello\n")
    assert store.read_logs("quickstart") == {"driver.log": "one\ntwo\n", "worker-0.log": "hello\n"}
    assert gcs_emulator.object_bytes(f"{gcs_prefix}/jobs/quickstart/logs/driver.log") == b"one\ntwo\n"


def test_worker_summaries_read_back_in_rank_order(gcs_store_url: str) -> None:
    store = JobStore(gcs_store_url)
    store.create_job(make_spec())
    assert store.read_worker_summaries("quickstart") == []
    summaries = [
        WorkerSummary(
            rank=rank,
            world_size=2,
            hostname=f"host-{rank}",
            epochs_trained=3,
            weights_sha256="ab" * 32,
            weights_norm=1.5,
            learning_rate=0.01,
        )
        for rank in (1, 0)
    ]
    for summary in summaries:
        store.write_worker_summary("quickstart", summary)
    assert [s.rank for s in store.read_worker_summaries("quickstart")] == [0, 1]
    assert store.read_worker_summaries("quickstart")[1] == summaries[0]


def test_uploaded_file_arrives_whole_at_a_gs_url(
    gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str, tmp_path: Path
) -> None:
    store = JobStore(gcs_store_url)
    store.create_job(make_spec())
    payload = b"\x00weights" + os.urandom(300_000)
    local = tmp_path / "final.keras"
    local.write_bytes(payload)
    url = store.upload_file("quickstart", str(local), "model", "final.keras")
    assert url == f"{gcs_store_url}/jobs/quickstart/model/final.keras"
    assert gcs_emulator.object_bytes(f"{gcs_prefix}/jobs/quickstart/model/final.keras") == payload
    assert store.fs.cat_file(store.path("quickstart", "model", "final.keras")) == payload


def test_file_larger_than_one_upload_request_arrives_whole(
    gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str, tmp_path: Path
) -> None:
    """gcsfs switches from one request to a resumable upload in 50 MiB chunks above 50 MiB (checkpoints do)."""
    store = JobStore(gcs_store_url)
    store.create_job(make_spec())
    payload = os.urandom(50 * 2**20 + 12345)
    local = tmp_path / "backup.h5"
    local.write_bytes(payload)
    store.upload_file("quickstart", str(local), "checkpoints", "backup.h5")
    assert gcs_emulator.object_bytes(f"{gcs_prefix}/jobs/quickstart/checkpoints/backup.h5") == payload


def test_job_names_lists_only_folders_holding_a_job_record_sorted(gcs_store_url: str) -> None:
    store = JobStore(gcs_store_url)
    assert store.job_names() == []
    store.create_job(make_spec("zeta"))
    store.create_job(make_spec("alpha"))
    store.fs.pipe_file(f"{store.root}/jobs/stray/logs/driver.log", b"no job.json here\n")
    assert store.job_names() == ["alpha", "zeta"]


def test_job_created_by_another_machine_is_listed_by_a_process_that_listed_before(
    gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str
) -> None:
    store = JobStore(gcs_store_url)
    store.create_job(make_spec("one"))
    assert store.job_names() == ["one"]
    record = store.load_job("one").model_copy(update={"name": "two"})
    gcs_emulator.put_object(f"{gcs_prefix}/jobs/two/job.json", record.model_dump_json().encode())  # not via gcsfs
    assert JobStore(gcs_store_url).job_names() == ["one", "two"]


def test_unknown_job_suggests_a_close_name(gcs_store_url: str) -> None:
    store = JobStore(gcs_store_url)
    store.create_job(make_spec("resnet-cifar"))
    with pytest.raises(JobNotFoundError) as caught:
        store.read_state("resnet-cifr")
    assert caught.value.hint == "did you mean 'resnet-cifar'?"
    with pytest.raises(JobNotFoundError) as caught:
        store.load_job("zzz")
    assert caught.value.hint == "see: orchestrator list"


def test_unreachable_gcs_endpoint_is_a_quick_store_error_naming_the_store(
    gcs_environment: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens on the endpoint: every store call fails with a StoreError instead of hanging.

    gcsfs retries a refused connection 6 times with exponential back-off (~33 s per call measured here; the count
    is fixed when gcsfs is imported, not a constructor option), so this test lowers it to 1 attempt. What is checked
    is that the store turns gcsfs' connection error into a StoreError and adds no waiting or looping of its own.
    """
    import socket

    import gcsfs.core
    from gcsfs.retry import retry_request

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # nothing listens once the socket is closed
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(
        gcsfs.core.GCSFileSystem, "_request", retry_request(retries=1)(gcsfs.core.GCSFileSystem._request.__wrapped__)
    )
    url = "gs://unreachable-bucket/store"
    store = JobStore(url)
    operations = {
        "create_job": lambda: store.create_job(make_spec()),
        "job_names": store.job_names,
        "read_state": lambda: store.read_state("quickstart"),
        "read_history": lambda: store.read_history("quickstart"),
    }
    for operation, call in operations.items():
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            call()
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"{operation} took {elapsed:.1f} s to fail"
        assert url in caught.value.message, operation
        assert f"127.0.0.1:{closed_port}" in caught.value.message, operation
        assert "--store" in (caught.value.hint or ""), operation
