"""One lifecycle owner: the driving process owns a job's status; ``stop`` and ``cancel`` ask through a stop command
and write a status themselves only when that driver is known to be gone (orchestrator/lifecycle.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from orchestrator import lifecycle, runner, submission
from orchestrator.commands import pending_commands, request_stop
from orchestrator.errors import ClusterError, UsageError
from orchestrator.lifecycle import DriverLease, driver_gone, end_for_gone_driver, wait_until_gone
from orchestrator.records import DriverRecord, utc_now
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.views import CancelOutput
from tests.conftest import quickstart_raw

JOB = "quickstart"


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": JOB}))
    return store


def running(store: JobStore) -> None:
    store.set_status(JOB, JobStatus.RUNNING, started_at=utc_now())


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid  # reaped: no process has it (until the kernel reuses it, far later)


def record(**changes: Any) -> DriverRecord:
    fields: dict[str, Any] = {"host": lifecycle.this_host(), "pid": os.getpid(), "command": "run"}
    return DriverRecord.model_validate({**fields, **changes})


def without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume gets as far as attaching to Ray, which fails here: what it recorded before stays to be read."""

    def no_ray(address: str | None) -> None:
        raise ClusterError("cannot start or reach Ray (test)")

    monkeypatch.setattr(runner, "_attach_to_ray", no_ray)


# ----------------------------------------------------------------------------------------- known gone
def test_a_driver_is_known_gone_only_from_its_record_ended_dead_pid_or_stale_heartbeat() -> None:
    assert driver_gone(None) is None  # nothing known: an older version's job
    assert driver_gone(record()) is None  # this very process, reporting now
    assert "without recording an end" in (driver_gone(record(ended_at=utc_now())) or "")
    pid = dead_pid()
    assert driver_gone(record(pid=pid)) == f"pid {pid} on {lifecycle.this_host()} (run) no longer runs"
    elsewhere = record(host="another-host", pid=1)  # its pid means nothing here: only its heartbeat counts
    assert driver_gone(elsewhere) is None
    stale = elsewhere.model_copy(update={"heartbeat_at": utc_now() - timedelta(seconds=lifecycle.GONE_AFTER_S + 5)})
    assert "last reported 65 s ago (it reports every 10 s)" in (driver_gone(stale) or "")


def test_the_lease_names_this_process_beats_while_it_drives_and_says_when_it_let_go(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "HEARTBEAT_S", 0.05)
    monkeypatch.setenv(lifecycle.SUBMISSION_ENV, "quickstart-1234abcd")
    with DriverLease(store, JOB, "run") as lease:
        first = store.read_driver(JOB)
        assert first is not None and (first.host, first.pid, first.ended_at) == (
            lifecycle.this_host(),
            os.getpid(),
            None,
        )
        assert first.ray_submission == "quickstart-1234abcd"
        with DriverLease(store, JOB, "resume") as inner:  # a takeover that then resumes: one lease
            assert inner is lease
        time.sleep(0.3)
        beat = store.read_driver(JOB)
        assert beat is not None and beat.heartbeat_at > first.heartbeat_at and beat.ended_at is None
        assert beat.command == "run"
    ended = store.read_driver(JOB)
    assert ended is not None and ended.ended_at is not None
    assert driver_gone(ended) is not None


def test_a_takeover_waits_for_a_driver_that_stopped_reporting_and_refuses_one_that_still_does(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "GONE_AFTER_S", 0.5)
    monkeypatch.setattr(lifecycle, "HEARTBEAT_S", 0.1)
    assert wait_until_gone(store, JOB) is None  # no record: nothing to wait for
    store.write_driver(JOB, record(host="lost-head", pid=7))
    started = time.monotonic()
    assert "last reported" in (wait_until_gone(store, JOB) or "")
    assert time.monotonic() - started >= 0.4
    beating = threading.Event()

    def beat() -> None:
        while not beating.wait(0.05):
            store.write_driver(JOB, record(host="live-head", pid=7))

    store.write_driver(JOB, record(host="live-head", pid=7))
    thread = threading.Thread(target=beat)
    thread.start()
    try:
        with pytest.raises(UsageError) as caught:
            wait_until_gone(store, JOB, timeout_s=1.0)
    finally:
        beating.set()
        thread.join()
    assert "job 'quickstart' is driven by pid 7 on live-head (run)" in caught.value.message


def test_run_or_resume_takes_over_a_job_whose_driver_is_gone_and_says_how_that_is_known(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(store)
    pid = dead_pid()
    store.write_driver(JOB, record(pid=pid))
    without_ray(monkeypatch)
    with pytest.raises(ClusterError):
        runner.run_spec(store.load_job(JOB).spec, store=store, or_resume=True)
    state = store.read_state(JOB)
    assert state.status is JobStatus.FAILED  # as the takeover left it: the resume never started
    assert state.reason == (
        f"its driver is gone (found RUNNING by run --or-resume: pid {pid} on {lifecycle.this_host()} (run) no longer "
        "runs); taken over from the latest backup"
    )
    driver = store.read_driver(JOB)
    assert driver is not None and driver.pid == os.getpid() and driver.ended_at is not None


def test_resume_takes_over_a_job_whose_driver_is_gone_and_refuses_one_a_live_driver_runs(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(store)
    store.write_driver(JOB, record())  # this process, reporting now: a live driver
    with pytest.raises(UsageError, match="a driver owns it now"):
        runner.resume_job(JOB, store=store)
    assert store.read_state(JOB).status is JobStatus.RUNNING
    pid = dead_pid()
    store.write_driver(JOB, record(pid=pid))
    without_ray(monkeypatch)
    with pytest.raises(ClusterError):
        runner.resume_job(JOB, store=store)
    state = store.read_state(JOB)
    reason = (
        f"its driver is gone (found RUNNING by resume: pid {pid} on {lifecycle.this_host()} (run) no longer runs); "
        "taken over from the latest backup"
    )
    assert (state.status, state.reason) == (JobStatus.FAILED, reason)  # not RUNNING again: nothing drives it
    assert f"resume: {reason}" in store.read_logs(JOB)["driver.log"]


def bounded_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The follow loops' sleeps, recorded instead of slept; a fifth fails the test (it would follow forever)."""
    from orchestrator import cli_live

    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        assert len(waits) < 5, "still following a job whose driver is gone"

    monkeypatch.setattr(cli_live.time, "sleep", wait)
    return waits


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_follower_gives_up_once_the_driver_is_gone_for_the_grace_and_not_while_a_takeover_may_come(
    store: JobStore,
) -> None:
    running(store)
    clock = Clock()
    watch = lifecycle.GoneWatch(store, JOB, grace_s=20.0, every_s=5.0, clock=clock)
    store.write_driver(JOB, record())
    assert watch.check(JobStatus.RUNNING) is None  # a live driver
    pid = dead_pid()
    store.write_driver(JOB, record(pid=pid))
    clock.now = 2.0
    assert watch.check(JobStatus.RUNNING) is None  # read at most every 5 s: not read yet
    clock.now = 6.0
    assert watch.check(JobStatus.RUNNING) is None  # gone since 6 s: within the grace
    clock.now = 16.0
    store.write_driver(JOB, record())  # a takeover leased the job: following goes on
    assert watch.check(JobStatus.RUNNING) is None
    store.write_driver(JOB, record(pid=pid))
    clock.now = 22.0
    assert watch.check(JobStatus.RUNNING) is None  # gone again since 22 s
    clock.now = 41.0
    assert watch.check(JobStatus.RUNNING) is None  # 19 s
    clock.now = 45.0
    assert watch.check(JobStatus.RUNNING) is None  # 23 s, but not read again yet
    clock.now = 46.0
    gone = f"pid {pid} on {lifecycle.this_host()} (run) no longer runs"
    assert watch.check(JobStatus.RUNNING) == gone
    assert watch.check(JobStatus.STOPPED) is None  # an end was recorded: nothing to give up on


def test_watch_and_status_say_the_driver_is_gone_and_what_continues_the_job(
    store: JobStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator import cli_live
    from orchestrator.handle import status_of

    running(store)
    pid = dead_pid()
    store.write_driver(JOB, record(pid=pid))
    monkeypatch.setattr(lifecycle, "FOLLOWER_GRACE_S", 0.0)
    waits = bounded_waits(monkeypatch)
    state = cli_live.follow_job(store, JOB, as_json=False)
    assert state.status is JobStatus.RUNNING and waits == []  # returned, not looping forever
    gone = f"pid {pid} on {lifecycle.this_host()} (run) no longer runs"
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (
        f"{JOB} is still RUNNING in the store, but its driver is gone: {gone}; `orchestrator resume {JOB}` continues "
        f"it from its newest backup, `orchestrator stop {JOB}` records it stopped"
    )
    cli_live.follow_job(store, JOB, as_json=True)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "driver_gone" and events[-1]["reason"] == gone
    status = status_of(store, JOB)
    assert status.driver_gone == gone
    out = Console(width=200, record=True)
    out.print(status.render())
    rows = [" ".join(line.split()) for line in out.export_text().splitlines()]
    assert rows[2] == f"driver gone: {gone}"  # under the status it contradicts
    assert rows[-1] == f"next orchestrator resume {JOB} (takes the job over from its newest backup)"
    store.write_driver(JOB, record())
    assert status_of(store, JOB).driver_gone is None


# ------------------------------------------------------------------------------------------------- stop
def test_stop_asks_a_live_driver_through_a_command_and_leaves_its_status_alone(store: JobStore) -> None:
    running(store)
    store.write_driver(JOB, record())
    output = request_stop(store, JOB, at_epoch_end=False)
    assert output.status is JobStatus.RUNNING and "the job applies it" in output.effect
    assert store.read_state(JOB).status is JobStatus.RUNNING
    assert [c.seq for c in pending_commands(store, JOB)] == [output.command.seq]


def test_stop_without_a_driver_record_asks_as_before(store: JobStore) -> None:
    running(store)
    request_stop(store, JOB, at_epoch_end=False)
    assert store.read_state(JOB).status is JobStatus.RUNNING


@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.PENDING, JobStatus.STOPPING])
def test_stop_records_stopped_itself_when_the_driver_is_known_gone(store: JobStore, status: JobStatus) -> None:
    if status is not JobStatus.PENDING:
        running(store)
    if status is JobStatus.STOPPING:
        store.set_status(JOB, JobStatus.STOPPING, "stop #1 in epoch 1, step 3")
    pid = dead_pid()
    store.write_driver(JOB, record(pid=pid))
    output = request_stop(store, JOB, at_epoch_end=False)
    state = store.read_state(JOB)
    gone = f"pid {pid} on {lifecycle.this_host()} (run) no longer runs"
    assert (state.status, state.stopped_by) == (JobStatus.STOPPED, "user")
    assert state.reason == f"stopped by stop #{output.command.seq}: its driver is gone ({gone})"
    assert output.status is JobStatus.STOPPED and "recorded it STOPPED at once" in output.effect
    assert pending_commands(store, JOB) == []  # void: no worker will apply it, and a resume must not
    assert store.read_acks(JOB)[output.command.seq].void is not None
    assert state.reason in store.read_logs(JOB)["driver.log"]


# ----------------------------------------------------------------------------------------------- cancel
class FakeJobs:
    """Ray's JobSubmissionClient, as cancel uses it: ``on_stop`` plays the driver's part when Ray stops the job."""

    def __init__(self, submission: str, on_stop: Any = None) -> None:
        self.submission, self.status, self.on_stop = submission, "RUNNING", on_stop

    def get_address(self) -> str:
        return "http://127.0.0.1:8265"

    def list_jobs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(submission_id=self.submission, metadata={"orchestrator_job": JOB}, status=self.status)]

    def stop_job(self, submission_id: str) -> None:
        if self.on_stop is not None:
            self.on_stop()
        self.status = "STOPPED"

    def get_job_status(self, submission_id: str) -> str:
        return f"JobStatus.{self.status}"


def cancel_with(monkeypatch: pytest.MonkeyPatch, store: JobStore, jobs: FakeJobs) -> CancelOutput:
    monkeypatch.setattr(submission, "job_client", lambda url: jobs)
    return submission.cancel(JOB, store=store, address="http://head:8265", wait_s=1.0, stop_wait_s=1.0)


def test_cancel_leaves_the_status_to_a_driver_that_records_its_stop(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(store)
    store.write_driver(JOB, record(host="head", pid=42, ray_submission="quickstart-1"))

    def driver_on_sigterm() -> None:  # what the driving process records on Ray's SIGTERM, a stop pending
        reason = "the command driving the job was terminated (exit 143) after stop #1 by someone (cancel)"
        end_for_gone_driver(store, JOB, JobStatus.STOPPED, reason)

    output = cancel_with(monkeypatch, store, FakeJobs("quickstart-1", on_stop=driver_on_sigterm))
    state = store.read_state(JOB)
    assert output.status is JobStatus.STOPPED and output.note is None
    assert state.reason is not None and state.reason.startswith("the command driving the job was terminated")
    assert [c.kind for c in store.read_commands(JOB)] == ["stop"]  # asked first, through a command
    assert "orchestrator cancel" not in store.read_logs(JOB).get("driver.log", "")


def test_cancel_records_stopped_when_the_ray_job_of_the_driver_ended_without_recording_an_end(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(store)
    store.write_driver(JOB, record(host="head", pid=42, ray_submission="quickstart-1"))  # a fresh heartbeat
    output = cancel_with(monkeypatch, store, FakeJobs("quickstart-1"))  # SIGKILLed before it recorded anything
    state = store.read_state(JOB)
    assert (output.status, state.stopped_by) == (JobStatus.STOPPED, "user")
    assert state.reason == "cancelled: its driver is gone (its Ray job quickstart-1 ended) without recording an end"


def test_cancel_of_a_job_an_older_version_drives_trusts_its_ended_ray_job(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(store)  # no driver.json
    assert cancel_with(monkeypatch, store, FakeJobs("quickstart-1")).status is JobStatus.STOPPED
    assert "its Ray job(s) quickstart-1 ended" in (store.read_state(JOB).reason or "")


def test_cancel_never_writes_the_status_of_a_driver_that_still_runs(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(store)
    store.write_driver(JOB, record(host="laptop", pid=42))  # a foreground run elsewhere, reporting
    output = cancel_with(monkeypatch, store, FakeJobs("quickstart-other"))
    assert output.status is JobStatus.RUNNING and output.note is not None and "still runs" in output.note
    assert [c.kind for c in pending_commands(store, JOB)] == ["stop"]  # its workers apply it


# ------------------------------------------------------------------------------------ the driver's own end
@pytest.mark.parametrize("asked", [True, False], ids=["a-person-asked", "a-bare-signal"])
def test_on_sigterm_the_driving_process_records_one_stop_a_person_s_if_a_stop_is_pending(
    store: JobStore, monkeypatch: pytest.MonkeyPatch, asked: bool
) -> None:
    """``cancel`` (a stop command, then Ray's SIGTERM) is a person's stop, which no retry undoes; a bare SIGTERM
    (ray job stop, a node going) is not. Either way the driving process records it, in one write."""
    from orchestrator.driver import JobDriver

    running(store)
    if asked:
        request_stop(store, JOB, at_epoch_end=False, issued_by="cancel")
    released = threading.Event()
    monkeypatch.setattr(JobDriver, "run", lambda self: released.wait(10))
    writes: list[JobStatus] = []
    set_status = store.set_status

    def recorded(name: str, status: JobStatus, *args: Any, **kwargs: Any) -> Any:
        writes.append(status)
        return set_status(name, status, *args, **kwargs)

    monkeypatch.setattr(store, "set_status", recorded)

    def terminated(snapshot: object) -> None:  # Ray's SIGTERM handler exits the main thread
        raise SystemExit(143)

    try:
        with pytest.raises(SystemExit):
            runner.drive_job(store, JOB, on_update=terminated)
    finally:
        released.set()
    state = store.read_state(JOB)
    assert writes == [JobStatus.STOPPING, JobStatus.STOPPED]
    assert (state.status, state.stopped_by) == (JobStatus.STOPPED, "user" if asked else "signal")
    assert state.reason is not None and state.reason.startswith("the command driving the job was terminated (exit 143)")
    assert ("after stop #1 by " in state.reason) is asked


def test_logs_follow_stops_when_the_driver_is_gone_and_exits_1(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    running(store)
    store.append_log(JOB, "driver.log", "2026-12-07 10:00:00 [driver] starting\n")
    pid = dead_pid()
    store.write_driver(JOB, record(pid=pid))
    monkeypatch.setattr(lifecycle, "FOLLOWER_GRACE_S", 0.0)
    bounded_waits(monkeypatch)
    result = CliRunner().invoke(app, ["logs", JOB, "-f", "--store", store.url])
    assert result.exit_code == 1
    assert "driver | 2026-12-07 10:00:00 [driver] starting" in result.stdout
    assert f"its driver is gone: pid {pid} on {lifecycle.this_host()} (run) no longer runs" in result.stderr
