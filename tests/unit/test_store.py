"""The job store on real fsspec filesystems (a local folder, memory:// and gs:// on the GCS emulator): layout,
atomicity, names."""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.errors import InvalidTransitionError, JobExistsError, JobNotFoundError, StoreError, UsageError
from orchestrator.records import EpochRecord, Progress, WorkerSummary
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore, default_store_url
from tests.conftest import quickstart_raw


def make_spec(name: str = "quickstart") -> JobSpec:
    return JobSpec.model_validate({**quickstart_raw(), "name": name})


def test_created_job_reads_back_with_status_pending(store_url: str) -> None:
    store = JobStore(store_url)
    record = store.create_job(make_spec(), spec_path="/somewhere/quickstart.yaml")
    assert store.load_job("quickstart") == record
    assert record.spec == make_spec()
    assert store.read_state("quickstart").status is JobStatus.PENDING
    assert store.job_names() == ["quickstart"]
    assert store.fs.exists(f"{store.root}/jobs/quickstart/job.json")
    assert store.fs.exists(f"{store.root}/jobs/quickstart/status.json")


def test_second_job_with_the_same_name_is_refused_with_a_hint(store_url: str) -> None:
    store = JobStore(store_url)
    first = store.create_job(make_spec())
    with pytest.raises(JobExistsError) as caught:
        store.create_job(make_spec())
    assert "--name" in (caught.value.hint or "")
    assert store.load_job("quickstart") == first  # the first job's record is untouched


def test_racing_creators_on_a_local_folder_yield_exactly_one_job(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        try:
            store.create_job(make_spec())
            outcomes.append("created")
        except JobExistsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["refused"] * 7


@pytest.mark.parametrize("name", ["../x", "UPPER", "-lead", "trail-", "a_b", "a" * 64, "", "x/y"])
def test_job_names_outside_the_rule_are_refused(store_url: str, name: str) -> None:
    store = JobStore(store_url)
    with pytest.raises(UsageError) as caught:
        store.load_job(name)
    assert "must be 1-63 characters of a-z, 0-9 and '-'" in caught.value.message


def test_unknown_job_suggests_a_close_name(store_url: str) -> None:
    store = JobStore(store_url)
    store.create_job(make_spec("resnet-cifar"))
    with pytest.raises(JobNotFoundError) as caught:
        store.read_state("resnet-cifr")
    assert caught.value.hint == "did you mean 'resnet-cifar'?"
    with pytest.raises(JobNotFoundError) as caught:
        store.load_job("zzz")
    assert caught.value.hint == "see: orchestrator list"


def test_status_follows_the_allowed_transitions_only(store_url: str) -> None:
    store = JobStore(store_url)
    store.create_job(make_spec())
    store.set_status("quickstart", JobStatus.RUNNING, attempt=1)
    store.set_status("quickstart", JobStatus.SUCCEEDED)
    with pytest.raises(InvalidTransitionError) as caught:
        store.set_status("quickstart", JobStatus.RUNNING)
    assert "job 'quickstart' is SUCCEEDED; it cannot become RUNNING" in caught.value.message
    state = store.read_state("quickstart")
    assert (state.status, state.attempt) == (JobStatus.SUCCEEDED, 1)


def test_history_keeps_every_epoch_in_order(store_url: str) -> None:
    store = JobStore(store_url)
    store.create_job(make_spec())
    for epoch in range(5):
        store.append_history(
            "quickstart",
            EpochRecord(epoch=epoch, attempt=1, learning_rate=0.1, metrics={"loss": 1.0 / (epoch + 1)}, seconds=1),
        )
    history = store.read_history("quickstart")
    assert [record.epoch for record in history] == [0, 1, 2, 3, 4]
    assert history[4].metrics == {"loss": 0.2}


def test_progress_is_absent_until_written(store_url: str) -> None:
    store = JobStore(store_url)
    store.create_job(make_spec())
    assert store.read_progress("quickstart") is None
    progress = Progress(attempt=1, epoch=2, epochs=6, step=10, steps_per_epoch=64, learning_rate=0.01)
    store.write_progress("quickstart", progress)
    assert store.read_progress("quickstart") == progress


def test_a_reader_never_sees_a_partial_file_while_a_writer_rewrites_it(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(make_spec())
    big = {f"metric_{i}": float(i) for i in range(2000)}  # ~40 kB per write: far beyond one write() call
    stop = threading.Event()
    written = 0

    def write() -> None:
        nonlocal written
        while not stop.is_set():
            store.write_progress(
                "quickstart",
                Progress(
                    attempt=1, epoch=0, epochs=1, step=written, steps_per_epoch=10**6, learning_rate=0.1, metrics=big
                ),
            )
            written += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        reads, deadline = 0, time.monotonic() + 60
        while reads < 300:
            assert time.monotonic() < deadline, f"only {reads} reads of a written progress in 60 s ({written} writes)"
            progress = store.read_progress("quickstart")
            if progress is not None:
                assert progress.metrics == big
                reads += 1
    finally:
        stop.set()
        writer.join()
    assert written > 1
    leftovers = [p.name for p in (tmp_path / "store" / "jobs" / "quickstart").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


def test_logs_and_files_live_in_the_jobs_folder(store_url: str, tmp_path: Path) -> None:
    store = JobStore(store_url)
    store.create_job(make_spec())
    store.append_log("quickstart", "driver.log", "one\n")
    store.append_log("quickstart", "driver.log", "two\n")
    store.write_log("quickstart", "worker-0.log", "hello\n")
    assert store.read_logs("quickstart") == {"driver.log": "one\ntwo\n", "worker-0.log": "hello\n"}
    local = tmp_path / "model.bin"
    local.write_bytes(b"\x00weights")
    url = store.upload_file("quickstart", str(local), "model", "final.keras")
    assert url.endswith("/jobs/quickstart/model/final.keras")
    assert store.fs.cat_file(store.path("quickstart", "model", "final.keras")) == b"\x00weights"


def test_empty_store_lists_no_jobs(store_url: str) -> None:
    assert JobStore(store_url).job_names() == []


def test_job_names_lists_only_folders_holding_a_job_record_sorted(store_url: str) -> None:
    store = JobStore(store_url)
    store.create_job(make_spec("zeta"))
    store.create_job(make_spec("alpha"))
    store.fs.makedirs(f"{store.root}/jobs/stray/logs", exist_ok=True)
    store.fs.pipe_file(f"{store.root}/jobs/stray/logs/driver.log", b"no job.json here\n")
    assert store.job_names() == ["alpha", "zeta"]


def test_worker_summaries_read_back_in_rank_order(store_url: str) -> None:
    store = JobStore(store_url)
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
    assert store.read_worker_summaries("quickstart") == summaries[::-1]


def test_unknown_scheme_is_a_store_error_with_a_hint() -> None:
    with pytest.raises(StoreError) as caught:
        JobStore("nosuchscheme://bucket/x")
    assert "nosuchscheme://bucket/x" in caught.value.message
    assert "gs://" in (caught.value.hint or "")


def test_unwritable_store_is_a_store_error_naming_the_store(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = JobStore(str(blocker / "store"))
    with pytest.raises(StoreError) as caught:
        store.create_job(make_spec())
    assert str(blocker / "store") in caught.value.message


def test_store_url_comes_from_option_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_STORE", "gs://team-bucket/jobs")
    assert default_store_url(None) == "gs://team-bucket/jobs"
    assert default_store_url("file:///tmp/mine") == "file:///tmp/mine"
    monkeypatch.delenv("ORCHESTRATOR_STORE")
    assert default_store_url(None).endswith(".orchestrator/store")


def _strict_json(text: str) -> object:
    """Parse as JSON proper: NaN and Infinity constants are not JSON, so refuse them."""

    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_diverged_epoch_reads_back_with_its_nan_and_inf_and_the_files_stay_valid_json(store_url: str) -> None:
    store = JobStore(store_url)
    store.create_job(make_spec())
    diverged = {"loss": math.nan, "accuracy": 0.1, "val_loss": math.inf, "val_accuracy": -math.inf}
    store.append_history("quickstart", EpochRecord(epoch=0, attempt=1, learning_rate=10.0, metrics=diverged, seconds=1))
    progress = Progress(attempt=1, epoch=0, epochs=6, step=5, steps_per_epoch=64, learning_rate=10.0, metrics=diverged)
    store.write_progress("quickstart", progress)
    (record,) = store.read_history("quickstart")
    assert math.isnan(record.metrics["loss"]) and record.metrics["val_loss"] == math.inf
    assert record.metrics["val_accuracy"] == -math.inf and record.metrics["accuracy"] == 0.1
    read = store.read_progress("quickstart")
    assert read is not None and math.isnan(read.metrics["loss"]) and read.metrics["val_loss"] == math.inf
    history_text = store._read_appended(store.path("quickstart", "history.jsonl")).decode()
    progress_text = store.fs.cat_file(store.path("quickstart", "progress.json")).decode()
    for document in (*history_text.splitlines(), progress_text):
        _strict_json(document)
        assert '"NaN"' in document and '"Infinity"' in document and '"-Infinity"' in document


def test_a_nan_written_as_null_by_an_earlier_version_reads_back_as_nan(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(make_spec())
    line = '{"epoch": 0, "attempt": 1, "learning_rate": 10.0, "metrics": {"loss": null, "accuracy": 0.1}, "seconds": 1}'
    Path(store.path("quickstart", "history.jsonl")).write_text(line + "\n")
    (record,) = store.read_history("quickstart")
    assert math.isnan(record.metrics["loss"]) and record.metrics["accuracy"] == 0.1


def _history_lines(store: JobStore, count: int) -> list[str]:
    return [
        EpochRecord(epoch=e, attempt=1, learning_rate=0.1, metrics={"loss": 1.0}, seconds=1).model_dump_json()
        for e in range(count)
    ]


def test_a_damaged_line_in_the_middle_of_the_history_is_left_out_with_a_warning_naming_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(make_spec())
    lines = _history_lines(store, 4)
    lines[1] = lines[1][:25]  # cut short
    lines[2] = '{"epoch": 2, "from": "another version"}'
    Path(store.path("quickstart", "history.jsonl")).write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="orchestrator.store"):
        history = store.read_history("quickstart")
    assert [r.epoch for r in history] == [0, 3]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "jobs/quickstart/history.jsonl line 2 is unreadable (not valid JSON: EOF while parsing" in warnings[0]
    assert "jobs/quickstart/history.jsonl line 3 is unreadable (" in warnings[1]


def test_a_damaged_line_of_a_record_that_numbers_attempts_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(make_spec())
    store.start_attempt("quickstart", start_epoch=0, restored_from=None)
    path = Path(store.path("quickstart", "attempts.jsonl"))
    path.write_text(path.read_text() + "{oops\n")
    with pytest.raises(StoreError) as caught:
        store.read_attempts("quickstart")
    assert "jobs/quickstart/attempts.jsonl line 2 is unreadable (not valid JSON: key must be a string" in str(
        caught.value
    )
    assert "delete that line" in (caught.value.hint or "")


def test_non_utf8_records_are_named_as_such_not_as_an_unreachable_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(make_spec())
    lines = _history_lines(store, 2)
    Path(store.path("quickstart", "history.jsonl")).write_bytes(
        lines[0].encode() + b"\n\xff\xfe garbage\n" + lines[1].encode() + b"\n"
    )
    with caplog.at_level("WARNING", logger="orchestrator.store"):
        assert [r.epoch for r in store.read_history("quickstart")] == [0, 1]
    assert "history.jsonl line 2 is unreadable (not UTF-8 text (byte 1 of the line))" in caplog.text
    Path(store.path("quickstart", "status.json")).write_bytes(b'{"status": "\xff"}')
    with pytest.raises(StoreError) as caught:
        store.read_state("quickstart")
    assert "jobs/quickstart/status.json is unreadable (not UTF-8 text (byte 13))" in caught.value.message
    assert "credentials" not in (caught.value.hint or "")


def test_a_timestamp_without_a_timezone_reads_as_utc(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(make_spec())
    path = Path(store.path("quickstart", "status.json"))
    state = json.loads(path.read_text())
    state["updated_at"] = "2026-01-02T03:04:05"
    path.write_text(json.dumps(state))
    assert store.read_state("quickstart").updated_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_backup_pruned_while_it_is_checked_is_gone_not_damaged(store_url: str, tmp_path: Path) -> None:
    from orchestrator.records import BackupFile, BackupManifest
    from orchestrator.store import file_digest

    store = JobStore(store_url)
    store.create_job(make_spec())
    (tmp_path / "state.index").write_bytes(b"index")
    size, sha256 = file_digest(str(tmp_path / "state.index"))
    manifest = BackupManifest(
        name="e00001-s0000000",
        epoch=1,
        attempt=1,
        learning_rate=0.1,
        files={"state.index": BackupFile(size=size, sha256=sha256)},
    )
    store.write_backup("quickstart", str(tmp_path), manifest)
    assert store.backup_problem("quickstart", "e00001-s0000000", checksums=True) is None
    store.fs.rm_file(store.path("quickstart", "checkpoints", "e00001-s0000000", "state.index"))
    assert store.backup_problem("quickstart", "e00001-s0000000") == "state.index is missing"
    store.fs.rm_file(store.path("quickstart", "checkpoints", "e00001-s0000000", "manifest.json"))  # pruning
    assert store.backup_problem("quickstart", "e00001-s0000000") is None
