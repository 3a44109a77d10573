"""Appends to a job's JSON-lines files and logs: two writers appending at once never lose a line, on a local folder,
memory:// and gs:// (the GCS emulator); and a job written by an older version (one object per file) still reads back.

An object store cannot append: the store gives each process its own part of an appended file
(``<file>.parts/<part>``) and reads the parts back merged; a local folder appends with O_APPEND.
The same with processes instead of threads, against the GCS server itself: tests/cloud/test_store_gcs.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.records import EpochRecord, FailureRecord
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw

WRITERS, LINES = 4, 50


def make_store(store_url: str) -> JobStore:
    store = JobStore(store_url)
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": "quickstart"}))
    return store


def run_at_once(*targets: object) -> None:
    """Start one thread per target together (a barrier) and wait for all; re-raise the first error."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def wrapped(target: object) -> None:
        barrier.wait()
        try:
            target()  # type: ignore[operator]
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_concurrent_appenders_of_records_lose_no_line(store_url: str) -> None:
    store = make_store(store_url)

    def appender(writer: int) -> object:
        def append() -> None:
            # each writer its own JobStore, as the controller and rank 0 have
            mine = JobStore(store_url)
            for line in range(LINES):
                mine.append_failure("quickstart", FailureRecord(reasons=[f"writer {writer} line {line}"]))

        return append

    run_at_once(*(appender(writer) for writer in range(WRITERS)))
    reasons = [failure.reasons[0] for failure in store.read_failures("quickstart")]
    assert len(reasons) == WRITERS * LINES, f"{WRITERS * LINES - len(reasons)} line(s) lost"
    for writer in range(WRITERS):  # each writer's lines in the order it wrote them
        assert [r for r in reasons if r.startswith(f"writer {writer} ")] == [
            f"writer {writer} line {line}" for line in range(LINES)
        ]


def test_concurrent_appenders_of_a_log_lose_no_line(store_url: str) -> None:
    store = make_store(store_url)

    def appender(writer: int) -> object:
        return lambda: [store.append_log("quickstart", "driver.log", f"w{writer} {n}\n") for n in range(LINES)]

    run_at_once(*(appender(writer) for writer in range(WRITERS)))
    lines = store.read_logs("quickstart")["driver.log"].splitlines()
    assert sorted(lines) == sorted(f"w{w} {n}" for w in range(WRITERS) for n in range(LINES))


def epoch(number: int, attempt: int = 1) -> EpochRecord:
    return EpochRecord(epoch=number, attempt=attempt, learning_rate=0.1, metrics={"loss": 1.0}, seconds=1)


def test_a_job_written_by_an_older_version_reads_back_and_appends_after_its_lines(store_url: str) -> None:
    """Before appends had parts, each file was one object (or local file), rewritten whole at every append;
    a FailureRecord had no ``kind`` at first."""
    store = make_store(store_url)
    old_failure = '{"failed_at": "2026-01-01T00:00:00Z", "reasons": ["rank 0: RuntimeError: lost"]}\n'
    history = "".join(epoch(n).model_dump_json() + "\n" for n in range(2))
    store.fs.pipe_file(store.path("quickstart", "failures.jsonl"), old_failure.encode())
    store.fs.pipe_file(store.path("quickstart", "history.jsonl"), history.encode())
    store.fs.makedirs(store.path("quickstart", "logs"), exist_ok=True)
    store.fs.pipe_file(store.path("quickstart", "logs", "driver.log"), b"old line\n")

    store.append_history("quickstart", epoch(1, attempt=2))  # epoch 1 trained again after a restore
    store.append_failure("quickstart", FailureRecord(reasons=["rank 1: new"], kind="notice"))
    store.append_log("quickstart", "driver.log", "new line\n")

    assert [(r.epoch, r.attempt) for r in store.read_history("quickstart")] == [(0, 1), (1, 2)]
    old, new = store.read_failures("quickstart")
    assert (old.kind, old.reasons, new.kind) == ("failure", ["rank 0: RuntimeError: lost"], "notice")
    assert store.read_logs("quickstart") == {"driver.log": "old line\nnew line\n"}


def test_failures_read_back_in_time_order_whoever_wrote_them(store_url: str) -> None:
    """The controller and rank 0 both record failures (in parts of their own on an object store)."""
    store = make_store(store_url)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    later = FailureRecord(failed_at=start + timedelta(seconds=5), reasons=["later"])
    store.append_failure("quickstart", later)
    store.append_failure("quickstart", FailureRecord(failed_at=start, reasons=["earlier"]))
    assert [f.reasons[0] for f in store.read_failures("quickstart")] == ["earlier", "later"]


def test_a_line_still_being_appended_on_a_local_folder_is_not_read_yet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """O_APPEND: a reader may see the start of a line whose write has not finished; it is not a damaged line."""
    store = make_store(str(tmp_path / "store"))
    store.append_history("quickstart", epoch(0))
    path = Path(store.path("quickstart", "history.jsonl"))
    with path.open("a") as handle:
        handle.write(epoch(1).model_dump_json()[:30])
    with caplog.at_level("WARNING", logger="orchestrator.store"):
        assert [r.epoch for r in store.read_history("quickstart")] == [0]
    assert caplog.records == []


def test_following_a_log_that_several_processes_append_to_prints_each_line_once(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.jobs import LogFollower, read_logs
    from orchestrator.store import appends as store_module

    store = make_store(store_url)
    store.write_log("quickstart", "driver.log", "old 1\nold 2\n")  # one whole file, as older versions wrote it

    def as_another_process() -> None:  # on an object store: the next appends go to a part of its own
        monkeypatch.setattr(store_module, "_own_parts", store_module._OwnParts())

    store.append_log("quickstart", "driver.log", "a 1\n")
    as_another_process()
    store.append_log("quickstart", "driver.log", "b 1\nb 2-half")
    follower = LogFollower(store, "quickstart", ["driver"], tail=2)
    assert follower.poll() == [("driver", "a 1"), ("driver", "b 1")]  # the last 2 whole lines of all pieces
    store.append_log("quickstart", "driver.log", "-done\n")
    as_another_process()
    store.append_log("quickstart", "driver.log", "c 1\n")
    assert follower.poll() == [("driver", "b 2-half-done"), ("driver", "c 1")]
    assert follower.poll() == []
    whole = "old 1\nold 2\na 1\nb 1\nb 2-half-done\nc 1\n"
    assert read_logs(store, "quickstart", [], None).logs == {"driver.log": whole} == store.read_logs("quickstart")
