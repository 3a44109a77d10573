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
from tests.conftest import REPO, quickstart_raw
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
    (part,) = gcs_emulator.object_names(f"{job_dir}/history.jsonl")  # this process's part of the history
    assert part.startswith(f"{job_dir}/history.jsonl.parts/")
    lines = gcs_emulator.object_bytes(part).decode().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    progress = Progress(attempt=1, epoch=2, epochs=6, step=10, steps_per_epoch=64, learning_rate=0.01)
    store.write_progress("quickstart", progress)
    store.write_progress("quickstart", latest := progress.model_copy(update={"step": 11}))
    assert Progress.model_validate_json(gcs_emulator.object_bytes(f"{job_dir}/progress.json")) == latest
    store.append_log("quickstart", "driver.log", "one\n")
    store.append_log("quickstart", "driver.log", "two\n")
    (part,) = gcs_emulator.object_names(f"{job_dir}/logs/driver.log")
    assert part.startswith(f"{job_dir}/logs/driver.log.parts/")
    assert gcs_emulator.object_bytes(part) == b"one\ntwo\n"


APPENDER = """
import sys
from orchestrator.records import FailureRecord
from orchestrator.store import JobStore

store, writer, lines = JobStore(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # every process starts appending at once
for line in range(lines):
    store.append_failure("quickstart", FailureRecord(reasons=[f"writer {writer} line {line}"]))
    store.append_log("quickstart", "driver.log", f"writer {writer} line {line}\\n")
"""


def test_processes_appending_at_once_lose_no_line(gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str) -> None:
    """Three processes (each a writer, as Ray Train's controller, rank 0 and a shell are) append 40 records and
    40 log lines each to the same files at the same time: every line is there, read through the store and on
    the server, each writer's lines in the order it wrote them."""
    import subprocess
    import sys

    store = JobStore(gcs_store_url)
    store.create_job(make_spec())
    writers, lines = 3, 40
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, gcs_store_url, str(w), str(lines)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for w in range(writers)
    ]
    for process in processes:  # each has imported the store and waits
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.flush()
    assert [process.wait(timeout=120) for process in processes] == [0] * writers
    expected = [f"writer {w} line {n}" for w in range(writers) for n in range(lines)]
    reasons = [failure.reasons[0] for failure in store.read_failures("quickstart")]
    assert len(reasons) == writers * lines, f"{writers * lines - len(reasons)} failure line(s) lost"
    for w in range(writers):
        assert [r for r in reasons if r.startswith(f"writer {w} ")] == expected[w * lines : (w + 1) * lines]
    assert sorted(store.read_logs("quickstart")["driver.log"].splitlines()) == sorted(expected)
    job_dir = f"{gcs_prefix}/jobs/quickstart"
    on_server = [
        line
        for name in gcs_emulator.object_names(f"{job_dir}/failures.jsonl")
        for line in gcs_emulator.object_bytes(name).decode().splitlines()
    ]
    assert len(on_server) == writers * lines


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
