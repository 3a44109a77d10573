"""``logs --since``: the duration or time it takes, each line's time, and the lines kept (with --tail, --source,
--follow and --json), against logs written in the formats the driver, the controller and the workers write."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import UsageError
from orchestrator.jobs import LogFollower, read_logs
from orchestrator.log_times import SinceFilter, line_time, parse_duration, parse_since
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw

NOW = datetime(2026, 12, 7, 17, 0, 0, tzinfo=UTC)
runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "back"),
    [("30s", timedelta(seconds=30)), ("10m", timedelta(minutes=10)), ("2h", timedelta(hours=2)), ("1d", timedelta(1))],
)
def test_a_duration_is_back_from_now(text: str, back: timedelta) -> None:
    assert parse_since(text, NOW) == NOW - back
    assert parse_duration(text.upper(), "--x") == back


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-12-07T16:30:00+01:00", datetime(2026, 12, 7, 15, 30, tzinfo=UTC)),
        ("2026-12-07T16:30:00Z", datetime(2026, 12, 7, 16, 30, tzinfo=UTC)),
        ("2026-12-07 16:30", datetime(2026, 12, 7, 16, 30, tzinfo=UTC)),  # no zone: UTC
        ("2026-12-07", datetime(2026, 12, 7, tzinfo=UTC)),
    ],
)
def test_an_iso_time_with_a_zone_or_in_utc(text: str, moment: datetime) -> None:
    assert parse_since(text, NOW) == moment


@pytest.mark.parametrize("text", ["10", "10 minutes", "-5m", "yesterday", "2026-13-01", "1w", ""])
def test_anything_else_is_one_line_naming_since_and_what_is_accepted(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_since(text, NOW)
    message = caught.value.message
    assert message.startswith(f"--since: got {text!r}, must be a duration such as 30s, 10m, 2h or 1d")
    assert "ISO-8601" in message and "(no zone: UTC)" in message and "\n" not in message


def test_each_log_formats_time_is_read() -> None:
    assert line_time("2026-12-07 17:42:17 [driver] attempt 1 started") == datetime(2026, 12, 7, 17, 42, 17, tzinfo=UTC)
    assert line_time("2026-12-07 17:42:17,123 [rank 0] INFO epoch 1") == datetime(
        2026, 12, 7, 17, 42, 17, 123000, tzinfo=UTC
    )
    assert line_time("Traceback (most recent call last):") is None
    assert line_time("orchestrator stop: requested by me@host") is None
    assert line_time("  2026-12-07 17:42:17 indented") is None


def test_an_unstamped_line_goes_with_the_line_before_it_in_its_own_log() -> None:
    kept = SinceFilter(NOW, start=NOW - timedelta(hours=1))
    lines = [
        "created, before any time\n",  # the job's creation: before --since
        "2026-12-07 16:59:59 [driver] old\n",
        "  old traceback line\n",
        "2026-12-07 17:00:00 [driver] at since\n",  # at --since counts
        "stop: requested\n",
    ]
    assert kept.keep("driver.log", lines) == lines[3:]
    assert kept.keep("driver.log", ["later, unstamped\n"]) == ["later, unstamped\n"]  # a later read: still after
    assert kept.keep("worker-0.log", ["unstamped in another log\n"]) == []  # its own log had no time yet
    everything = SinceFilter(None, start=NOW)
    assert everything.text("driver.log", "".join(lines)) == "".join(lines)


def test_lines_before_a_logs_first_time_are_kept_when_since_is_before_the_jobs_creation() -> None:
    kept = SinceFilter(NOW - timedelta(days=1), start=NOW - timedelta(hours=1))
    assert kept.keep("driver.log", ["created\n"]) == ["created\n"]


# ---------------------------------------------------------------------------------------- against a store
@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    store = JobStore(str(tmp_path / "store"))
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": "timed"}))
    store.set_status("timed", JobStatus.RUNNING, attempt=1)
    store.write_log(
        "timed",
        "driver.log",
        "2026-12-07 15:00:00 [driver] attempt 1 started\norchestrator stop: early\n"
        "2026-12-07 16:30:00 [driver] attempt 2 started\n",
    )
    store.write_log(
        "timed",
        "controller.log",
        "2026-12-07 15:10:00 [controller] worker group failed (rank 1: lost)\n",
    )
    store.write_log(
        "timed",
        "worker-0.log",
        "2026-12-07 15:00:01,100 [rank 0] INFO epoch 1\n2026-12-07 16:31:00,900 [rank 0] ERROR boom\n"
        "Traceback (most recent call last):\n  ValueError: x\n",
    )
    return store


def test_read_logs_keeps_the_lines_since_then_the_tail_of_those(store: JobStore) -> None:
    since = datetime(2026, 12, 7, 16, 0, tzinfo=UTC)
    assert read_logs(store, "timed", [], None, since).logs == {
        "controller.log": "",
        "driver.log": "2026-12-07 16:30:00 [driver] attempt 2 started\n",
        "worker-0.log": "2026-12-07 16:31:00,900 [rank 0] ERROR boom\nTraceback (most recent call last):\n"
        "  ValueError: x\n",
    }
    assert read_logs(store, "timed", ["worker"], 1, since).logs == {"worker-0.log": "  ValueError: x\n"}
    early = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    assert read_logs(store, "timed", ["driver"], None, early).logs["driver.log"].count("\n") == 3


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_the_command_takes_a_time_with_a_zone_and_json(store: JobStore) -> None:
    code, out, err = invoke(
        "logs", "timed", "--store", store.url, "--since", "2026-12-07T17:20:00+01:00", "--source", "driver", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["logs"] == {"driver.log": "2026-12-07 16:30:00 [driver] attempt 2 started\n"}
    code, out, _ = invoke("logs", "timed", "--store", store.url, "--since", "10m")  # all of it is older
    assert code == 0 and "attempt" not in out and "boom" not in out


def test_follow_with_since_prints_only_the_newer_lines_then_the_new_ones(store: JobStore) -> None:
    follower = LogFollower(store, "timed", ["driver", "worker-0"], since=datetime(2026, 12, 7, 16, 31, tzinfo=UTC))
    assert follower.poll() == [
        ("worker-0", "2026-12-07 16:31:00,900 [rank 0] ERROR boom"),
        ("worker-0", "Traceback (most recent call last):"),
        ("worker-0", "  ValueError: x"),
    ]
    store.append_log("timed", "driver.log", "stop: unstamped, after an old line\n2026-12-07 16:32:00 [driver] new\n")
    assert follower.poll() == [("driver", "2026-12-07 16:32:00 [driver] new")]
    store.set_status("timed", JobStatus.SUCCEEDED)
    code, out, err = invoke(
        "logs", "timed", "--store", store.url, "-f", "--json", "--since", "2026-12-07T16:31:30", "--tail", "5"
    )
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"job": "timed", "source": "driver", "line": "2026-12-07 16:32:00 [driver] new"}
    ]


@pytest.mark.parametrize("args", [("--since", "5 minutes"), ("-f", "--since", "tomorrow")])
def test_a_bad_since_is_one_line_and_exit_2(store: JobStore, args: tuple[str, ...]) -> None:
    code, out, err = invoke("logs", "timed", "--store", store.url, *args)
    assert code == 2 and out == ""
    assert err.startswith(f"error[usage]: --since: got {args[-1]!r}, must be a duration such as 30s")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_time_zone_other_than_utc_is_converted() -> None:
    east = timezone(timedelta(hours=9))
    assert parse_since("2026-12-08T02:00:00+09:00") == datetime(2026, 12, 8, 2, tzinfo=east)
    assert parse_since("2026-12-08T02:00:00+09:00") == datetime(2026, 12, 7, 17, tzinfo=UTC)


def test_worker_log_lines_are_stamped_in_utc_whatever_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import time as clock

    from orchestrator.worker.worker_log import worker_logger

    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9: a local stamp would be nine hours off
    clock.tzset()
    try:
        logger = worker_logger(None, 0)  # type: ignore[arg-type]  # the store handler only holds its writer
        record = logging.LogRecord("w", logging.INFO, __file__, 1, "hello", None, None)
        record.created, record.msecs = 1796666400.0, 0.0  # 2026-12-07 18:00:00 UTC
        line = logger.handlers[0].format(record)
    finally:
        monkeypatch.undo()
        clock.tzset()
    assert line.startswith("2026-12-07 18:00:00,") and line.endswith("[rank 0] INFO hello")
    assert line_time(line) == datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
