"""The conventions every CLI has: --version, shell completion, --json errors, list filters, logs --tail and
--source (followed by reading only new bytes), watch --json, and delete that never touches a running or another
job."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

import orchestrator
from orchestrator import cli_live, jobs
from orchestrator.cli import app
from orchestrator.jobs import LogFollower
from orchestrator.records import BackupFile, BackupManifest, EpochRecord, JobRecord, Progress
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import REPO, quickstart_raw

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(str(tmp_path / "store"))


def add_job(store: JobStore, name: str, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": name}))
    path = {
        JobStatus.PENDING: [],
        JobStatus.RUNNING: [JobStatus.RUNNING],
        JobStatus.STOPPED: [JobStatus.RUNNING, JobStatus.STOPPING, JobStatus.STOPPED],
        JobStatus.FAILED: [JobStatus.RUNNING, JobStatus.FAILED],
        JobStatus.SUCCEEDED: [JobStatus.RUNNING, JobStatus.SUCCEEDED],
    }[status]
    for step in path:
        store.set_status(name, step, attempt=1)


def add_folder(store: JobStore, name: str, folder: str, size: int = 10) -> None:
    for file in ("a.bin", "manifest.json"):
        Path(store.path(name, *folder.split("/"), file)).parent.mkdir(parents=True, exist_ok=True)
        Path(store.path(name, *folder.split("/"), file)).write_bytes(b"x" * size)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------ --version, completion
def test_version_prints_the_installed_version_and_exits_0() -> None:
    code, out, _ = invoke("--version")
    assert code == 0
    assert out.startswith(f"orchestrator {orchestrator.__version__} (spot-orchestrator, Python ")


def test_version_works_as_python_dash_m_too() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--version"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("orchestrator ")


def test_shell_completion_is_offered_and_completes_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = invoke("--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out
    monkeypatch.setenv("_ORCHESTRATOR_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "orchestrator sta")
    monkeypatch.setenv("COMP_CWORD", "1")
    result = runner.invoke(app, [], prog_name="orchestrator")
    assert "status" in result.stdout.split() and "stop" not in result.stdout.split()


def complete(line: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What bash completion offers for the last word of ``line``."""
    words = line.split(" ")
    monkeypatch.setenv("_ORCHESTRATOR_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", line)
    monkeypatch.setenv("COMP_CWORD", str(len(words) - 1))
    return runner.invoke(app, [], prog_name="orchestrator").stdout.split()


def test_completion_offers_the_stores_job_names(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("quickstart", "quickstart-2", "resnet"):
        add_job(store, name)
    assert complete(f"orchestrator status --store {store.url} quick", monkeypatch) == ["quickstart", "quickstart-2"]
    monkeypatch.setenv("ORCHESTRATOR_STORE", store.url)
    assert complete("orchestrator compare quickstart r", monkeypatch) == ["resnet"]
    assert complete("orchestrator logs ", monkeypatch) == ["quickstart", "quickstart-2", "resnet"]
    monkeypatch.setenv("ORCHESTRATOR_STORE", "unknown-protocol://x")  # an unreadable store: no names, no error
    assert complete("orchestrator status q", monkeypatch) == []


# ------------------------------------------------------------------------------------------------- --json errors
def test_json_errors_are_one_json_object_with_the_text_errors_exit_code(store: JobStore) -> None:
    text_code, text_out, text_err = invoke("status", "nope", "--store", store.url)
    code, out, err = invoke("status", "nope", "--store", store.url, "--json")
    assert text_code == code == 3 and text_out == "" and "error[job-not-found]" in text_err
    error = json.loads(out)["error"]
    assert error["code"] == "job-not-found" and error["exit_code"] == 3
    assert error["message"] == f"no job named 'nope' in store {store.url}"
    assert error["hint"] == "see: orchestrator list"
    assert err == ""


@pytest.mark.parametrize(
    "args",
    [
        ("history", "Bad_Name"),
        ("logs", "nope"),
        ("set-lr", "nope", "-1"),
        ("delete", "nope"),
        ("list", "--limit", "0"),
        ("list", "--limit", "many"),  # click's own error
        ("list", "--bogus"),
        ("status",),  # a missing argument
    ],
)
def test_every_json_command_reports_errors_as_json(args: tuple[str, ...], store: JobStore) -> None:
    text_code, _, text_err = invoke(*args, "--store", store.url)
    code, out, _ = invoke(*args, "--store", store.url, "--json")
    assert code == text_code != 0 and text_err
    error = json.loads(out)["error"]
    assert error["exit_code"] == code and error["message"]
    assert "Traceback" not in out + text_err


def test_a_spec_error_lists_its_problems_in_json(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nepochs: -1\nbogus: 1\n")
    code, out, _ = invoke("validate", str(spec), "--json")
    error = json.loads(out)["error"]
    assert code == 2 == error["exit_code"] and error["code"] == "spec"
    assert "line 2: epochs: got -1, must be greater than 0" in error["problems"]
    assert any(p.startswith("line 3: bogus: unknown key") for p in error["problems"])
    assert error["message"].endswith("\n  ".join(["", *error["problems"]]))


# ----------------------------------------------------------------------------------------- list --status --limit
def test_list_filters_by_status_and_limits_to_the_newest(store: JobStore) -> None:
    for name, status in [
        ("a-done", JobStatus.SUCCEEDED),
        ("b-stopped", JobStatus.STOPPED),
        ("c-failed", JobStatus.FAILED),
        ("d-done", JobStatus.SUCCEEDED),
    ]:
        add_job(store, name, status)

    def names(*args: str) -> list[str]:
        code, out, err = invoke("list", "--store", store.url, "--json", *args)
        assert code == 0, err
        return [row["name"] for row in json.loads(out)["jobs"]]

    assert names() == ["d-done", "c-failed", "b-stopped", "a-done"]
    assert names("--status", "succeeded") == ["d-done", "a-done"]
    assert names("--status", "STOPPED,failed") == ["c-failed", "b-stopped"]
    assert names("--status", "stopped", "--status", "SUCCEEDED") == ["d-done", "b-stopped", "a-done"]
    assert names("--limit", "2") == ["d-done", "c-failed"]
    assert names("--status", "succeeded", "--limit", "1") == ["d-done"]
    code, out, _ = invoke("list", "--store", store.url, "--status", "running")
    assert code == 0 and out.strip() == f"no RUNNING jobs in store {store.url}"
    code, out, _ = invoke("list", "--store", store.url, "--status", "succeeded", "--limit", "1")
    assert f"SUCCEEDED jobs in {store.url} (the newest 1)" in out and "d-done" in out and "a-done" not in out


def test_list_reads_the_jobs_concurrently(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(6):
        add_job(store, f"job-{index}")
    together = threading.Barrier(3, timeout=10)  # broken (an error) unless 3 reads wait at once
    load_job = store.load_job

    def slow_load(job: str) -> JobRecord:
        together.wait()
        return load_job(job)

    monkeypatch.setattr(store, "load_job", slow_load)
    monkeypatch.setattr(jobs, "READERS", 3)
    output = jobs.list_jobs(store, [], None)
    assert [row.name for row in output.jobs] == [f"job-{index}" for index in reversed(range(6))]
    assert output.unreadable == {}


def test_list_rejects_an_unknown_status_and_a_limit_below_1(store: JobStore) -> None:
    code, _, err = invoke("list", "--store", store.url, "--status", "runing")
    assert code == 2
    assert "--status: got 'runing', must be one of PENDING, RUNNING, RECOVERING" in err
    code, _, err = invoke("list", "--store", store.url, "--limit", "0")
    assert code == 2 and "--limit: got 0, must be a number of jobs (>= 1)" in err


# --------------------------------------------------------------------------------------- logs --tail --source
def add_logs(store: JobStore, name: str = "logged") -> None:
    add_job(store, name)
    store.write_log(name, "driver.log", "d1\nd2\nd3\n")
    store.write_log(name, "controller.log", "c1\n")
    store.write_log(name, "worker-0.log", "w0-1\nw0-2\n")
    store.write_log(name, "worker-1.log", "w1-1\nw1-2\nw1-3\n")


def test_logs_tail_and_source(store: JobStore) -> None:
    add_logs(store)

    def logs(*args: str) -> dict[str, str]:
        code, out, err = invoke("logs", "logged", "--store", store.url, "--json", *args)
        assert code == 0, err
        result: dict[str, str] = json.loads(out)["logs"]
        return result

    assert logs("--tail", "1") == {
        "controller.log": "c1\n",
        "driver.log": "d3\n",
        "worker-0.log": "w0-2\n",
        "worker-1.log": "w1-3\n",
    }
    assert logs("--tail", "5", "--source", "driver") == {"driver.log": "d1\nd2\nd3\n"}
    assert logs("--tail", "0", "--source", "driver") == {"driver.log": ""}
    assert logs("--source", "worker") == {"worker-0.log": "w0-1\nw0-2\n", "worker-1.log": "w1-1\nw1-2\nw1-3\n"}
    assert logs("--source", "1", "--source", "controller") == {
        "controller.log": "c1\n",
        "worker-1.log": "w1-1\nw1-2\nw1-3\n",
    }
    code, out, _ = invoke("logs", "logged", "--store", store.url, "--tail", "2", "--source", "worker-1")
    assert code == 0 and "w1-2\nw1-3" in out and "w1-1" not in out and "d3" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tail", "-1"), "--tail: got -1, must be a number of lines (>= 0)"),
        (("--source", "rank1"), "--source: got 'rank1', must be driver, controller, worker (every rank), worker-N"),
        (("--source", "worker-7"), "--source: got worker-7, but job 'logged' has logs from: controller, driver, "),
    ],
)
def test_logs_rejects_a_bad_tail_or_source_in_one_line(store: JobStore, args: tuple[str, ...], message: str) -> None:
    add_logs(store)
    code, out, err = invoke("logs", "logged", "--store", store.url, *args)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) <= 2  # the error, and at most a hint


def test_following_reads_only_the_new_bytes_and_waits_for_a_whole_line(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_logs(store)
    follower = LogFollower(store, "logged", ["driver", "worker-1"], tail=1)
    assert follower.poll() == [("driver", "d3"), ("worker-1", "w1-3")]
    assert follower.poll() == []
    reads: list[tuple[str, int]] = []
    read_log = store.read_log

    def counted(job: str, log: str, start: int = 0) -> bytes:
        reads.append((log, start))
        return read_log(job, log, start)

    monkeypatch.setattr(store, "read_log", counted)
    store.append_log("logged", "driver.log", "d4\nd5-half")
    store.append_log("logged", "worker-0.log", "not followed\n")
    assert follower.poll() == [("driver", "d4")]
    assert reads == [("driver.log", len("d1\nd2\nd3\n"))]  # only the grown, followed log, from where it was
    store.append_log("logged", "driver.log", "-done\n")
    assert follower.poll() == [("driver", "d5-half-done")]


def test_logs_follow_prints_each_line_once_with_its_source_until_the_job_ends(store: JobStore) -> None:
    add_logs(store)
    code, out, _ = invoke("logs", "logged", "--store", store.url, "-f", "--tail", "1", "--source", "worker")
    assert code == 0
    assert out.splitlines() == ["worker-0 | w0-2", "worker-1 | w1-3"]
    code, out, _ = invoke("logs", "logged", "--store", store.url, "-f", "--source", "driver", "--json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"job": "logged", "source": "driver", "line": line} for line in ("d1", "d2", "d3")
    ]


# ---------------------------------------------------------------------------------------------- watch --json
def test_watch_json_is_one_object_per_line_each_event_once_then_the_end(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_job(store, "live", JobStatus.RUNNING)
    store.write_progress(
        "live", Progress(attempt=1, epoch=0, epochs=6, step=5, steps_per_epoch=10, learning_rate=0.001)
    )
    ticks: list[float] = []

    def next_second(seconds: float) -> None:  # the job moves on while watch waits
        ticks.append(seconds)
        if len(ticks) == 1:
            store.append_history(
                "live", EpochRecord(epoch=0, attempt=1, learning_rate=0.001, metrics={"loss": 1.5}, seconds=2.0)
            )
            store.write_progress(
                "live", Progress(attempt=1, epoch=1, epochs=6, step=0, steps_per_epoch=10, learning_rate=0.001)
            )
        elif len(ticks) == 3:
            store.set_status("live", JobStatus.STOPPING)
            store.set_status("live", JobStatus.STOPPED, reason="stopped on request", stopped_by="user")

    monkeypatch.setattr(cli_live.time, "sleep", next_second)
    code, out, _ = invoke("watch", "live", "--store", store.url, "--json")
    assert code == 7  # STOPPED, as without --json
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["state", "progress", "epoch", "progress", "state", "end"]
    assert {e["job"] for e in events} == {"live"}
    assert events[0]["state"]["status"] == "RUNNING" and events[1]["progress"]["step"] == 5
    assert events[2]["epoch"]["metrics"] == {"loss": 1.5} and events[3]["progress"]["epoch"] == 1
    assert events[4]["state"]["status"] == events[5]["state"]["status"] == "STOPPED"
    assert len(ticks) == 3


def test_watch_json_of_an_ended_job_and_of_an_unknown_one(store: JobStore) -> None:
    add_job(store, "done")
    code, out, _ = invoke("watch", "done", "--store", store.url, "--json")
    assert code == 0
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["state", "end"]
    code, out, _ = invoke("watch", "nope", "--store", store.url, "--json")
    assert code == 3 and json.loads(out)["error"]["code"] == "job-not-found"


# ----------------------------------------------------------------------------------------------------- delete
@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.PENDING])
def test_delete_refuses_a_job_that_may_still_run(store: JobStore, status: JobStatus) -> None:
    add_job(store, "busy", status)
    before = files_under(Path(store.root))
    code, out, err = invoke("delete", "busy", "--store", store.url)
    assert code == 2 and out == ""
    assert f"error[usage]: job 'busy' is {status}: delete refuses a job whose driver may still write" in err
    assert "Traceback" not in err
    assert files_under(Path(store.root)) == before


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.STOPPED, JobStatus.FAILED])
def test_delete_removes_the_whole_job_and_nothing_of_another(store: JobStore, status: JobStatus) -> None:
    add_job(store, "quick", status)
    add_job(store, "quickstart")  # its name starts with the deleted one's
    add_folder(store, "quick", "checkpoints/e00001-s0000000")
    others = {f for f in files_under(Path(store.root)) if not f.startswith("jobs/quick/")}
    code, out, err = invoke("delete", "quick", "--store", store.url, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["whole"] is True and result["files"] >= 4 and result["bytes"] >= 20
    assert not Path(store.job_dir("quick")).exists()
    assert files_under(Path(store.root)) == others
    assert store.job_names() == ["quickstart"]
    add_job(store, "quick")  # the name is free again


def test_delete_on_an_object_store_touches_only_the_jobs_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    store = JobStore("memory://delete-prefix")
    add_job(store, "quick")
    add_job(store, "quickstart")
    store.write_log("quickstart", "driver.log", "kept\n")
    find = store.fs.find

    def by_prefix(path: str, **kwargs: object) -> dict[str, dict[str, object]]:
        """Lists as an object store may: every key that starts with the path, another job's too."""
        found: dict[str, dict[str, object]] = find(path.rsplit("/", 1)[0], **kwargs)
        return {key: info for key, info in found.items() if key.startswith(path)}

    monkeypatch.setattr(store.fs, "find", by_prefix)
    assert any("/jobs/quickstart/" in key for key in by_prefix(store.job_dir("quick"), detail=True))
    files, _ = store.delete_job_files("quick")
    assert files >= 2
    assert store.job_names() == ["quickstart"]
    assert store.read_logs("quickstart") == {"driver.log": "kept\n"}
    assert store.read_state("quickstart").status is JobStatus.SUCCEEDED


def test_delete_keep_snapshots_deletes_only_a_finished_jobs_backups(store: JobStore) -> None:
    add_job(store, "done")
    add_folder(store, "done", "checkpoints/e00002-s0000000")
    add_folder(store, "done", "ray/run")
    manifest = BackupManifest(
        name="e00001-s0000000",
        epoch=1,
        attempt=1,
        learning_rate=0.001,
        files={"model.keras": BackupFile(size=3, sha256="0" * 64)},
    )
    snapshot = Path(store.path("done", "snapshots", manifest.name))
    snapshot.mkdir(parents=True)
    (snapshot / "manifest.json").write_text(manifest.model_dump_json())
    (snapshot / "model.keras").write_bytes(b"abc")
    code, out, err = invoke("delete", "done", "--keep-snapshots", "--store", store.url)
    assert code == 0, err
    assert "deleted the backups of job 'done' (SUCCEEDED): 4 files" in out and "e00001-s0000000" in out
    left = files_under(Path(store.job_dir("done")))
    assert not [f for f in left if f.startswith(("checkpoints/", "ray/"))]
    assert {"job.json", "status.json", "snapshots/e00001-s0000000/model.keras", "logs/driver.log"} <= left
    assert store.job_names() == ["done"]


def test_delete_keep_snapshots_refuses_a_job_that_resumes_from_its_backups(store: JobStore) -> None:
    add_job(store, "paused", JobStatus.STOPPED)
    add_folder(store, "paused", "checkpoints/e00002-s0000000")
    code, _, err = invoke("delete", "paused", "--keep-snapshots", "--store", store.url)
    assert code == 2
    assert "--keep-snapshots: job 'paused' is STOPPED, and `orchestrator resume paused` continues from its" in err
    assert Path(store.path("paused", "checkpoints", "e00002-s0000000", "a.bin")).is_file()


def test_delete_an_unknown_job_says_so(store: JobStore) -> None:
    add_job(store, "quickstart")
    code, _, err = invoke("delete", "quickstar", "--store", store.url)
    assert code == 3 and "no job named 'quickstar'" in err and "did you mean 'quickstart'?" in err


def test_help_lists_every_command_once_in_its_place() -> None:
    """The commands live in cli, cli_cluster and cli_jobs; --help lists them in HELP_ORDER, which names each one
    (a command registered but missing from it would go last)."""
    import typer
    from typer.core import TyperGroup

    from orchestrator.cli import HELP_ORDER

    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    assert group.list_commands(typer.Context(group)) == HELP_ORDER.split()
    code, out, _ = invoke("--help")
    assert code == 0
    commands = out[out.index("Commands") :]
    rows = [line.split()[1] for line in commands.splitlines() if line.startswith("│ ") and line[2].isalpha()]
    assert rows == HELP_ORDER.split()
