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

from orchestrator.errors import JobExistsError, StoreError
from orchestrator.records import EpochRecord, JobRecord, JobState, Progress
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw
from tests.gcs import Emulator


def make_spec(name: str = "quickstart") -> JobSpec:
    return JobSpec.model_validate({**quickstart_raw(), "name": name})


def epoch(number: int) -> EpochRecord:
    return EpochRecord(epoch=number, attempt=1, learning_rate=0.1, metrics={"loss": 1.0 / (number + 1)}, seconds=1)


def test_what_the_store_writes_is_on_the_server(gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str) -> None:
    """The store's own behaviour on gs:// is tested by tests/unit/test_store.py (its ``store_url`` fixture has a
    ``gs`` case); here, what it wrote is read from the server's JSON API, without gcsfs or its cache."""
    import gcsfs.core

    store = JobStore(gcs_store_url)
    assert type(store.fs) is gcsfs.core.GCSFileSystem and not store.is_local
    record = store.create_job(make_spec())
    job_dir = f"{gcs_prefix}/jobs/quickstart"
    assert gcs_emulator.object_names(gcs_prefix) == [f"{job_dir}/job.json", f"{job_dir}/status.json"]
    assert JobRecord.model_validate_json(gcs_emulator.object_bytes(f"{job_dir}/job.json")) == record
    with pytest.raises(JobExistsError):
        store.create_job(make_spec())
    assert JobRecord.model_validate_json(gcs_emulator.object_bytes(f"{job_dir}/job.json")) == record
    store.set_status("quickstart", JobStatus.RUNNING, attempt=1)
    on_server = JobState.model_validate_json(gcs_emulator.object_bytes(f"{job_dir}/status.json"))
    assert (on_server.status, on_server.attempt) == (JobStatus.RUNNING, 1)
    for number in range(3):
        store.append_history("quickstart", epoch(number))
    lines = gcs_emulator.object_bytes(f"{job_dir}/history.jsonl").decode().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    progress = Progress(attempt=1, epoch=2, epochs=6, step=10, steps_per_epoch=64, learning_rate=0.01)
    store.write_progress("quickstart", progress)
    store.write_progress("quickstart", latest := progress.model_copy(update={"step": 11}))
    assert Progress.model_validate_json(gcs_emulator.object_bytes(f"{job_dir}/progress.json")) == latest
    store.append_log("quickstart", "driver.log", "one\n")
    store.append_log("quickstart", "driver.log", "two\n")
    assert gcs_emulator.object_bytes(f"{job_dir}/logs/driver.log") == b"one\ntwo\n"


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


def test_job_created_by_another_machine_is_listed_by_a_process_that_listed_before(
    gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str
) -> None:
    store = JobStore(gcs_store_url)
    store.create_job(make_spec("one"))
    assert store.job_names() == ["one"]
    record = store.load_job("one").model_copy(update={"name": "two"})
    gcs_emulator.put_object(f"{gcs_prefix}/jobs/two/job.json", record.model_dump_json().encode())  # not via gcsfs
    assert JobStore(gcs_store_url).job_names() == ["one", "two"]


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


def test_a_client_holding_a_silent_connection_does_not_stop_the_others(
    gcs_store_url: str, gcs_emulator: Emulator
) -> None:
    """A Ray worker whose gcsfs thread has connected but not yet sent its request (paused while TensorFlow's
    multi-worker set-up holds the GIL) must not stop every other client: GCS serves connections concurrently, and
    the emulator must too, or a job's workers deadlock (bench/gcs.py)."""
    import socket
    import threading
    from urllib.parse import urlparse

    endpoint = urlparse(gcs_emulator.endpoint)
    names: list[str] = []

    def use_the_store() -> None:
        store = JobStore(gcs_store_url)
        store.create_job(make_spec())
        names.extend(store.job_names())

    with socket.create_connection((endpoint.hostname, endpoint.port), timeout=5):  # connected, sends nothing
        client = threading.Thread(target=use_the_store, daemon=True)
        client.start()
        client.join(timeout=30)  # a single-threaded server never answers while the silent connection is open
        assert not client.is_alive(), "the store got no answer while another client held a silent connection"
    assert names == ["quickstart"]
