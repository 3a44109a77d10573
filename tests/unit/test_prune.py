"""``orchestrator prune`` and the config file's ``[retention]``: the decisions (pure: facts in, decisions out),
the deletions on a local folder, fsspec's memory store and GCS (the emulator: ``cloud``), and the command."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import UsageError
from orchestrator.retention import JobFacts, decide, prune
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.user_config import Retention
from tests.conftest import quickstart_raw

NOW = datetime(2026, 12, 7, 17, 0, tzinfo=UTC)
DAY = timedelta(days=1)
runner = CliRunner()


def fact(name: str, status: JobStatus, days_ago: float, has_backups: bool = True) -> JobFacts:
    return JobFacts(name, status, NOW - days_ago * DAY, has_backups)


def actions(jobs: list[JobFacts], keep_snapshots: bool, older_than: timedelta = 30 * DAY) -> dict[str, str]:
    rows = decide(jobs, now=NOW, older_than=older_than, keep_snapshots=keep_snapshots)
    assert [row.name for row in rows] == [job.name for job in jobs]
    return {row.name: row.action for row in rows}


JOBS = [
    *(fact(f"active-{s.value.lower()}", s, 400) for s in JobStatus if s.is_active()),
    fact("new-success", JobStatus.SUCCEEDED, 29.9),
    fact("old-success", JobStatus.SUCCEEDED, 30),  # exactly the threshold: goes
    fact("old-stopped", JobStatus.STOPPED, 45),
    fact("old-failed", JobStatus.FAILED, 90),
    fact("old-success-pruned", JobStatus.SUCCEEDED, 60, has_backups=False),
]


def test_whole_jobs_go_once_they_ended_long_enough_ago_never_one_that_may_run() -> None:
    assert {name for name in actions(JOBS, False) if name.startswith("active-")} == {
        "active-pending",
        "active-running",
        "active-recovering",
        "active-stopping",
    }
    assert actions(JOBS, False) == {
        "active-pending": "keep",
        "active-running": "keep",
        "active-recovering": "keep",
        "active-stopping": "keep",
        "new-success": "keep",
        "old-success": "delete",
        "old-stopped": "delete",
        "old-failed": "delete",
        "old-success-pruned": "delete",
    }


def test_keep_snapshots_deletes_only_a_succeeded_jobs_backups_and_keeps_what_resumes() -> None:
    decided = actions(JOBS, True)
    assert {name: action for name, action in decided.items() if action != "keep"} == {"old-success": "delete-backups"}
    rows = {row.name: row.why for row in decide(JOBS, now=NOW, older_than=30 * DAY, keep_snapshots=True)}
    assert rows["old-stopped"] == "STOPPED: resume continues from its backups (keep_snapshots keeps them)"
    assert rows["old-success-pruned"] == "its backups are deleted already (keep_snapshots keeps the rest)"
    assert rows["new-success"] == "ended 29.9d ago, less than 30d"
    assert rows["active-running"] == "RUNNING: it may still run"


def test_a_shorter_threshold_takes_more() -> None:
    assert actions(JOBS, False, older_than=timedelta(hours=1))["new-success"] == "delete"


# ------------------------------------------------------------------------------------------------ a store
def add_job(store: JobStore, name: str, status: JobStatus, days_ago: float) -> None:
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": name}))
    path = {
        JobStatus.RUNNING: [JobStatus.RUNNING],
        JobStatus.STOPPED: [JobStatus.RUNNING, JobStatus.STOPPING, JobStatus.STOPPED],
        JobStatus.FAILED: [JobStatus.RUNNING, JobStatus.FAILED],
        JobStatus.SUCCEEDED: [JobStatus.RUNNING, JobStatus.SUCCEEDED],
    }[status]
    for step in path:
        ended = {"ended_at": datetime.now(UTC) - days_ago * DAY} if step.is_terminal() else {}
        store.set_status(name, step, attempt=1, **ended)
    for folder in ("checkpoints/e00001-s0000000", "snapshots/e00001-s0000000"):
        store.fs.makedirs(store.path(name, *folder.split("/")), exist_ok=True)
        store.fs.pipe(store.path(name, *folder.split("/"), "model.keras"), b"x" * 100)
    store.write_log(name, "driver.log", "2026-12-07 15:00:00 [driver] started\n")


def files(store: JobStore, job: str) -> set[str]:
    root = store.job_dir(job)
    return {path.split(root + "/", 1)[1] for path in store.fs.find(root)}


@pytest.fixture
def filled(store_url: str) -> JobStore:
    store = JobStore(store_url)
    add_job(store, "quick", JobStatus.SUCCEEDED, 40)  # its name starts another job's
    add_job(store, "quickstart", JobStatus.SUCCEEDED, 2)
    add_job(store, "paused", JobStatus.STOPPED, 40)
    add_job(store, "busy", JobStatus.RUNNING, 0)
    return store


def test_prune_is_a_dry_run_until_told_then_deletes_only_what_goes(filled: JobStore) -> None:
    before = {job: files(filled, job) for job in filled.job_names()}
    dry = prune(filled, Retention(finished_after="30d"))
    assert not dry.applied and dry.deleted == []
    assert {row.name for row in dry.jobs if row.action == "delete"} == {"quick", "paused"}
    assert {job: files(filled, job) for job in filled.job_names()} == before
    done = prune(filled, Retention(finished_after="30d"), apply=True)
    assert sorted(d.name for d in done.deleted) == ["paused", "quick"] and all(d.whole for d in done.deleted)
    assert sum(d.files for d in done.deleted) >= 8
    assert sorted(filled.job_names()) == ["busy", "quickstart"]
    assert {job: files(filled, job) for job in filled.job_names()} == {
        job: before[job] for job in ("busy", "quickstart")
    }
    again = prune(filled, Retention(finished_after="30d"), apply=True)
    assert again.deleted == []


def test_prune_keep_snapshots_takes_only_the_backups_and_once(filled: JobStore) -> None:
    done = prune(filled, Retention(finished_after="30d", keep_snapshots=True), apply=True)
    assert [(d.name, d.whole) for d in done.deleted] == [("quick", False)]
    left = files(filled, "quick")
    assert "snapshots/e00001-s0000000/model.keras" in left and "job.json" in left
    assert not [f for f in left if f.startswith("checkpoints/")]
    assert "checkpoints/e00001-s0000000/model.keras" in files(filled, "paused")  # resumable: kept whole
    assert "checkpoints/e00001-s0000000/model.keras" in files(filled, "quickstart")  # too recent
    again = prune(filled, Retention(finished_after="30d", keep_snapshots=True))
    assert [row.action for row in again.jobs if row.name == "quick"] == ["keep"]


def test_the_options_come_before_the_config_and_no_policy_is_an_error(filled: JobStore) -> None:
    result = prune(filled, Retention(finished_after="30d"), older_than="1d", keep_snapshots=True)
    assert result.older_than == "1d" and result.keep_snapshots
    assert {row.name for row in result.jobs if row.action != "keep"} == {"quick", "quickstart"}
    with pytest.raises(UsageError, match=r"prune: no retention: give --older-than"):
        prune(filled, Retention())
    with pytest.raises(UsageError, match=r"--older-than: got '30 days', must be a duration such as 30s"):
        prune(filled, Retention(finished_after="30d"), older_than="30 days")


# ---------------------------------------------------------------------------------------------- the command
def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(path))


def test_the_command_reads_retention_from_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JobStore(str(tmp_path / "store"))
    add_job(store, "quick", JobStatus.SUCCEEDED, 40)
    add_job(store, "quickstart", JobStatus.FAILED, 40)
    config_file(tmp_path, monkeypatch, '[retention]\nfinished_after = "30d"\nkeep_snapshots = true\n')
    code, out, err = invoke("prune", "--store", store.url)
    assert code == 0, err
    assert "quick (SUCCEEDED, ended " in out and "would delete its backups" in out
    assert "1 job(s) to prune (ended 30d ago or more, keeping snapshots); kept 1; run again with --yes" in out
    assert Path(store.path("quick", "checkpoints", "e00001-s0000000", "model.keras")).is_file()
    code, out, err = invoke("prune", "--store", store.url, "--whole", "--yes", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["applied"] and not result["keep_snapshots"]
    assert sorted(d["name"] for d in result["deleted"]) == ["quick", "quickstart"]
    assert store.job_names() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[retention]\nfinished_after = "30 days"\n', "retention.finished_after: got '30 days': must be a duration"),
        ("[retention]\nkeep = true\n", "retention.keep: unknown key; allowed keys: finished_after, keep_snapshots"),
        ('[retention]\nkeep_snapshots = "maybe"\n', "retention.keep_snapshots: got 'maybe'"),
    ],
)
def test_a_bad_retention_is_one_line_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    config_file(tmp_path, monkeypatch, text)
    code, out, err = invoke("prune", "--store", str(tmp_path / "store"))
    assert code == 2 and out == ""
    assert message in err.splitlines()[0] and "Traceback" not in err


def test_the_command_without_a_policy_or_with_a_bad_duration(tmp_path: Path) -> None:
    code, _, err = invoke("prune", "--store", str(tmp_path / "store"))
    assert code == 2 and "error[usage]: prune: no retention: give --older-than (e.g. 30d)" in err
    code, out, _ = invoke("prune", "--store", str(tmp_path / "store"), "--older-than", "soon", "--json")
    assert code == 2 and "--older-than: got 'soon', must be a duration" in json.loads(out)["error"]["message"]
