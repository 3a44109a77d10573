"""The CLI in-process (typer's CliRunner) against an isolated store: outputs, --json, exit codes, no tracebacks."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.records import BackupFile, BackupManifest, EpochRecord, Evaluation, Progress, ResizeRecord, utc_now
from orchestrator.render import epoch_line
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore, file_digest
from tests.conftest import JOBS, REPO, quickstart_raw, write_spec

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(str(tmp_path / "cli-store"))


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def add_trained_job(store: JobStore, name: str = "quickstart", epochs: int = 3) -> None:
    store.create_job(JobSpec.model_validate({**quickstart_raw(), "name": name}))
    store.set_status(name, JobStatus.RUNNING, attempt=1)
    for epoch in range(epochs):
        store.append_history(
            name,
            EpochRecord(
                epoch=epoch,
                attempt=1,
                learning_rate=0.001,
                metrics={"loss": 2.0 - epoch, "accuracy": 0.3 * epoch},
                seconds=1.5,
            ),
        )
    store.write_progress(
        name,
        Progress(
            attempt=1,
            epoch=epochs - 1,
            epochs=6,
            step=64,
            steps_per_epoch=64,
            learning_rate=0.001,
            metrics={"loss": 0.5},
        ),
    )


def test_validate_accepts_the_quickstart() -> None:
    code, out, _ = invoke("validate", str(JOBS / "quickstart.yaml"))
    assert code == 0
    assert "job 'quickstart': small_cnn on synthetic data, adam lr=0.001, 6 epochs x batch 64, 2 worker(s)" in out


def test_validate_reports_every_problem_and_exits_2_without_a_traceback(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["optimizer"]["learning_rate"] = -1
    raw["bogus"] = True
    code, out, err = invoke("validate", str(write_spec(tmp_path, raw)))
    assert code == 2
    assert out == ""
    assert "error[spec]:" in err and "2 problems" in err
    assert "optimizer.learning_rate: got -1, must be greater than 0" in err
    assert "bogus: unknown key" in err
    assert "hint: `orchestrator schema` prints every field" in err
    assert "Traceback" not in err


def test_validate_json_is_machine_readable() -> None:
    code, out, _ = invoke("validate", str(JOBS / "quickstart.yaml"), "--json")
    assert code == 0 and json.loads(out)["name"] == "quickstart"


def test_schema_prints_json_schema() -> None:
    code, out, _ = invoke("schema")
    assert code == 0 and json.loads(out)["title"] == "JobSpec"


def test_list_status_and_history_read_the_store(store: JobStore) -> None:
    add_trained_job(store)
    code, out, _ = invoke("list", "--store", store.url)
    assert code == 0 and "quickstart" in out and "RUNNING" in out and "3/6" in out

    code, out, _ = invoke("status", "quickstart", "--store", store.url, "--json")
    status = json.loads(out)
    assert code == 0
    assert (status["state"]["status"], status["epochs_done"], status["progress"]["epoch"]) == ("RUNNING", 3, 2)

    code, out, _ = invoke("history", "quickstart", "--store", store.url, "--json")
    assert code == 0 and [e["epoch"] for e in json.loads(out)["epochs"]] == [0, 1, 2]
    code, out, _ = invoke("history", "quickstart", "--store", store.url)
    assert code == 0 and " acc " in out and "0.6000" in out


def test_store_comes_from_the_environment(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    add_trained_job(store, "from-env")
    monkeypatch.setenv("ORCHESTRATOR_STORE", store.url)
    code, out, _ = invoke("list", "--json")
    assert code == 0 and [job["name"] for job in json.loads(out)["jobs"]] == ["from-env"]


def test_list_on_an_empty_store_says_how_to_start() -> None:
    code, out, _ = invoke("list")
    assert code == 0 and "orchestrator run jobs/quickstart.yaml" in out


def test_unknown_job_exits_3_with_did_you_mean(store: JobStore) -> None:
    add_trained_job(store)
    code, _, err = invoke("status", "quickstrat", "--store", store.url)
    assert code == 3
    assert "error[job-not-found]: no job named 'quickstrat'" in err and "did you mean 'quickstart'?" in err


def test_bad_job_name_exits_2(store: JobStore) -> None:
    code, _, err = invoke("history", "../etc", "--store", store.url)
    assert code == 2 and "job name: got '../etc'" in err


def test_run_refuses_a_taken_name_before_starting_anything(store: JobStore) -> None:
    add_trained_job(store)
    code, _, err = invoke("run", str(JOBS / "quickstart.yaml"), "--store", store.url)
    assert code == 3
    assert "a job named 'quickstart' already exists" in err and "--name" in err
    assert store.read_state("quickstart").status is JobStatus.RUNNING  # the existing job is untouched


def test_run_refuses_an_invalid_spec_before_starting_anything(tmp_path: Path, store: JobStore) -> None:
    raw = quickstart_raw()
    raw["epochs"] = "many"
    code, _, err = invoke("run", str(write_spec(tmp_path, raw)), "--store", store.url)
    assert code == 2 and "epochs: got 'many'" in err
    assert store.job_names() == []


def test_logs_prints_every_log_of_the_job(store: JobStore) -> None:
    add_trained_job(store)
    store.append_log("quickstart", "driver.log", "attempt 1: starting\n")
    store.append_log("quickstart", "worker-1.log", "[rank 1] hello\n")
    code, out, _ = invoke("logs", "quickstart", "--store", store.url)
    assert code == 0
    assert out.index("==> driver.log <==") < out.index("attempt 1: starting") < out.index("==> worker-1.log <==")


def test_the_cli_does_not_import_tensorflow_or_ray_for_store_commands(store: JobStore) -> None:
    """`list`, `status`, `history` and `logs` run in a fresh interpreter; then what they imported is looked at."""
    add_trained_job(store)
    probe = f"""if True:
        import sys
        from orchestrator.cli import app
        for args in (["list"], ["status", "quickstart"], ["history", "quickstart"], ["logs", "quickstart"]):
            code = app([*args, "--store", {store.url!r}], standalone_mode=False)
            assert code in (None, 0), (args, code)
        print("IMPORTED", sorted({{m.split(".")[0] for m in sys.modules}} & {{"tensorflow", "tf_keras", "ray"}}))
    """
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "RUNNING" in done.stdout and "3/6" in done.stdout and "0.6000" in done.stdout  # they ran and read it
    assert done.stdout.splitlines()[-1] == "IMPORTED []"


def test_a_damaged_job_record_does_not_hide_the_other_jobs(store: JobStore) -> None:
    add_trained_job(store, "healthy")
    add_trained_job(store, "damaged")
    Path(store.path("damaged", "job.json")).write_text('{"name": "damaged", "from": "another version"}')
    code, out, err = invoke("list", "--store", store.url)
    assert code == 0, err
    assert "healthy" in out and "1 job in store" in out and "could not be read (1 job read)" in out
    assert "damaged: jobs/damaged/job.json is unreadable" in out
    code, _, err = invoke("status", "damaged", "--store", store.url)
    assert code == 4 and "Traceback" not in err
    assert (
        "error[store]:" in err and "jobs/damaged/job.json is unreadable (from: Extra inputs are not permitted)" in err
    )
    assert "hint: the file was damaged, or written by another version of orchestrator" in err


def test_a_job_whose_status_is_not_written_yet_reads_as_pending(store: JobStore) -> None:
    add_trained_job(store)
    Path(store.path("quickstart", "status.json")).unlink()
    code, out, _ = invoke("status", "quickstart", "--store", store.url, "--json")
    assert code == 0 and json.loads(out)["state"]["status"] == "PENDING"


@pytest.mark.parametrize(
    ("status", "advice"),
    [(JobStatus.SUCCEEDED, "it trained every epoch"), (JobStatus.RUNNING, "a driver owns it now")],
)
def test_resume_refuses_a_job_that_is_not_stopped_or_failed(store: JobStore, status: JobStatus, advice: str) -> None:
    add_trained_job(store)
    if status is JobStatus.SUCCEEDED:
        store.set_status("quickstart", JobStatus.SUCCEEDED)
    code, _, err = invoke("resume", "quickstart", "--store", store.url)
    assert code == 2
    assert f"job 'quickstart' is {status.value}; only a STOPPED or FAILED job can be resumed ({advice}" in err
    assert store.read_state("quickstart").status is status  # untouched


def test_resume_of_an_unknown_job_says_so(store: JobStore) -> None:
    code, _, err = invoke("resume", "nope", "--store", store.url)
    assert code == 3 and "no job named 'nope'" in err


def test_status_of_a_stopped_job_says_how_to_continue(store: JobStore) -> None:
    add_trained_job(store)
    store.set_status("quickstart", JobStatus.STOPPING)
    store.set_status("quickstart", JobStatus.STOPPED, reason="interrupted by the user (Ctrl+C)")
    code, out, _ = invoke("status", "quickstart", "--store", store.url)
    assert code == 0 and "orchestrator resume quickstart" in out and "interrupted by the user" in out


def add_diverged_job(store: JobStore, name: str = "diverged", *, legacy_null: bool = False) -> None:
    """Two good epochs, then one whose loss went NaN (written as null by earlier versions with ``legacy_null``)."""
    add_trained_job(store, name, epochs=2)
    nan_metrics = {"loss": math.nan, "accuracy": 0.1, "val_loss": math.inf, "val_accuracy": 0.1}
    store.append_history(name, EpochRecord(epoch=2, attempt=1, learning_rate=10.0, metrics=nan_metrics, seconds=1.5))
    store.write_progress(
        name,
        Progress(attempt=1, epoch=2, epochs=6, step=64, steps_per_epoch=64, learning_rate=10.0, metrics=nan_metrics),
    )
    if legacy_null:
        for file in ("history.jsonl", "progress.json"):
            path = Path(store.path(name, file))
            path.write_text(path.read_text().replace('"NaN"', "null").replace('"Infinity"', "null"))
    store.set_status(name, JobStatus.FAILED, reason="the loss was NaN")


@pytest.mark.parametrize("legacy_null", [False, True], ids=["written-now", "written-as-null-before"])
def test_a_diverged_job_is_listed_read_and_plotted_with_nan_shown_as_nan(
    store: JobStore, tmp_path: Path, legacy_null: bool
) -> None:
    add_diverged_job(store, legacy_null=legacy_null)
    code, out, err = invoke("list", "--store", store.url)
    assert code == 0 and "diverged" in out and "unreadable" not in out, err
    code, out, err = invoke("history", "diverged", "--store", store.url)
    assert code == 0, err
    assert "nan" in out and ("nan" if legacy_null else "inf") in out
    code, out, err = invoke("history", "diverged", "--store", store.url, "--json")
    assert code == 0, err
    assert json.loads(out)["epochs"][2]["metrics"]["loss"] == "NaN"  # valid JSON, and still says what it was
    code, out, err = invoke("status", "diverged", "--store", store.url)
    assert code == 0 and "loss nan" in out, err
    code, out, err = invoke("plot", "diverged", "-o", str(tmp_path / "d.png"), "--store", store.url)
    assert code == 0 and "(3 epochs" in out, err
    code, out, err = invoke("compare", "diverged", "-o", str(tmp_path / "c.png"), "--store", store.url, "--json")
    assert code == 0, err
    row = json.loads(out)["rows"][0]
    assert row["best_val_loss"] is None and row["best_val_accuracy"] == 0.1  # a non-finite loss is no one's best
    code, out, err = invoke("watch", "diverged", "--store", store.url)
    assert code == 1 and "diverged ended FAILED: the loss was NaN" in out, err


def test_history_with_a_damaged_line_shows_the_other_epochs_and_warns_about_that_line(store: JobStore) -> None:
    add_trained_job(store)
    path = Path(store.path("quickstart", "history.jsonl"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n")
    code, out, err = invoke("history", "quickstart", "--store", store.url, "--json")
    assert code == 0, err
    assert [e["epoch"] for e in json.loads(out)["epochs"]] == [0, 2]
    assert err.count("warning: ") == 1
    assert "jobs/quickstart/history.jsonl line 2 is unreadable (not valid JSON:" in err
    code, out, err = invoke("status", "quickstart", "--store", store.url)
    assert code == 0 and err.count("warning: ") == 1, err  # read several times, said once


def test_list_says_how_many_jobs_could_not_be_read_instead_of_no_jobs(store: JobStore) -> None:
    add_trained_job(store, "one")
    add_trained_job(store, "two")
    for job in ("one", "two"):
        Path(store.path(job, "status.json")).write_text("")
    code, out, err = invoke("list", "--store", store.url)
    assert code == 0, err
    assert "no jobs" not in out
    assert f"2 jobs in store {store.url} could not be read (none read)" in out
    assert "one: jobs/one/status.json is unreadable (not valid JSON: EOF while parsing" in out


def test_status_reads_a_record_whose_timestamp_has_no_timezone(store: JobStore) -> None:
    add_trained_job(store)
    store.start_attempt("quickstart", start_epoch=0, restored_from=None)
    for path in Path(store.job_dir("quickstart")).iterdir():
        if path.is_file():
            path.write_text(re.sub(r'(T[0-9:.]+)(Z|[+-]00:00)"', r'\1"', path.read_text()))
    assert not re.search(r'[0-9](Z|[+-]00:00)"', Path(store.path("quickstart", "progress.json")).read_text())
    code, out, err = invoke("status", "quickstart", "--store", store.url)
    assert code == 0 and "Traceback" not in err, err
    assert "RUNNING" in out


@pytest.mark.parametrize("port", ["99999", "-1", "0"])
def test_up_with_a_port_outside_the_tcp_range_is_one_line(port: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import local_head

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refused `up` must not start anything")

    monkeypatch.setattr(local_head, "read_head", lambda: None)
    monkeypatch.setattr(local_head, "ensure_token", never)
    monkeypatch.setattr(local_head.subprocess, "run", never)
    code, _, err = invoke("up", "--port", port)
    assert code == 2 and f"error[usage]: --port: got {port}, must be a TCP port number, 1-65535" in err
    code, _, err = invoke("up", "--dashboard-port", port)
    assert code == 2 and f"--dashboard-port: got {port}" in err and "Traceback" not in err


def test_k8s_render_with_a_missing_a_folder_or_a_non_utf8_spec_is_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\n\xff\xfe\n")
    cases = {tmp_path / "missing.yaml": "file not found", tmp_path: "is a folder", binary: "not UTF-8 text"}
    for spec, problem in cases.items():
        for name in ([], ["--name", "job"]):
            code, out, err = invoke("k8s", "render", str(spec), "--store", "gs://bucket/store", "--image", "i:1", *name)
            assert code == 2 and out == "" and "Traceback" not in err
            assert f"error[spec]: {spec}: 1 problem" in err and problem in err


def test_k8s_render_does_not_look_for_the_model_code_here_it_is_in_the_image(tmp_path: Path) -> None:
    raw = {**quickstart_raw(), "model": {"function": "/opt/models/net.py:build"}}
    code, out, err = invoke(
        "k8s", "render", str(write_spec(tmp_path, raw)), "--store", "gs://bucket/store", "--image", "i:1"
    )
    assert code == 0 and "kind: RayJob" in out, err


def test_sweep_of_a_non_utf8_file_is_one_line(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_bytes(b"sweep: x\nbase: \xff\n")
    code, _, err = invoke("sweep", str(sweep))
    assert code == 2 and "not UTF-8 text (byte 15)" in err and "Traceback" not in err


def test_validate_of_an_alias_bomb_or_deep_nesting_is_one_line(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    deep = "name: x\nmodel: " + "[" * 3000 + "]" * 3000 + "\n"
    for text, problem in ((bomb + "name: b\n", "more than 20,000 values"), (deep, "nested too deeply")):
        code, _, err = invoke("validate", str(write_spec_text(tmp_path, text)))
        assert code == 2 and problem in err and "Traceback" not in err and len(err.splitlines()) <= 3


def write_spec_text(folder: Path, text: str) -> Path:
    path = folder / "job.yaml"
    path.write_text(text)
    return path


def add_branched_job(store: JobStore) -> None:
    """10 epochs on branch 0, then `resume --from-epoch 6` (branch 1), which has trained epochs 7 and 8 so far."""
    store.create_job(JobSpec.model_validate(quickstart_raw()))
    store.set_status("quickstart", JobStatus.RUNNING, attempt=1)
    for epoch in range(10):
        store.append_history(
            "quickstart", EpochRecord(epoch=epoch, attempt=1, learning_rate=1e-3, metrics={"loss": 1.0}, seconds=1.0)
        )
    store.add_branch("quickstart", from_epoch=6, snapshot="e00006-b0")
    for epoch in (6, 7):
        store.append_history(
            "quickstart",
            EpochRecord(epoch=epoch, attempt=2, learning_rate=2e-3, metrics={"loss": 0.5}, seconds=1.0, branch=1),
        )


def test_the_live_run_leaves_out_a_superseded_branch_before_the_new_one_retrains_its_epochs(store: JobStore) -> None:
    add_branched_job(store)
    history = store.read_history("quickstart")
    assert [(r.epoch, r.branch) for r in history] == [*((e, 0) for e in range(6)), (6, 1), (7, 1)]
    assert len(store.read_history_lines("quickstart")) == 12  # the audit trail keeps every line
    store.set_status("quickstart", JobStatus.STOPPING)
    store.set_status("quickstart", JobStatus.STOPPED)
    code, out, _ = invoke("watch", "quickstart", "--store", store.url)  # ends at once: the job is STOPPED
    assert code == 7
    lines = [line for line in out.splitlines() if ": epoch " in line]
    assert [line.split(" lr ")[0] for line in lines] == [f"quickstart: epoch {e}/6" for e in range(1, 9)]
    assert all("lr 0.002" in line for line in lines[6:]) and "epoch 9/" not in out and "epoch 10/" not in out
    code, out, _ = invoke("status", "quickstart", "--store", store.url, "--json")
    assert code == 0 and json.loads(out)["epochs_done"] == 8


def test_a_resumed_job_shows_no_position_until_its_new_attempt_reports(store: JobStore) -> None:
    from orchestrator.runner import read_snapshot

    add_trained_job(store)  # progress.json says epoch 3 of attempt 1
    spec = store.load_job("quickstart").spec
    assert read_snapshot(store, "quickstart", spec).progress is not None
    store.set_status("quickstart", JobStatus.STOPPING)
    store.set_status("quickstart", JobStatus.STOPPED)
    store.set_status("quickstart", JobStatus.PENDING, reason="resume requested")
    assert read_snapshot(store, "quickstart", spec).progress is None  # starting: the old position is not current
    store.set_status("quickstart", JobStatus.RUNNING, started_at=utc_now())
    assert read_snapshot(store, "quickstart", spec).progress is None  # the new attempt has not reported yet


@pytest.mark.parametrize(("status", "code"), [(JobStatus.SUCCEEDED, 0), (JobStatus.STOPPED, 7), (JobStatus.FAILED, 1)])
def test_watch_exits_with_the_jobs_end(store: JobStore, status: JobStatus, code: int) -> None:
    add_trained_job(store)
    if status is JobStatus.STOPPED:
        store.set_status("quickstart", JobStatus.STOPPING)
    store.set_status("quickstart", status, reason="because")
    exit_code, out, _ = invoke("watch", "quickstart", "--store", store.url)
    assert exit_code == code and f"quickstart ended {status.value}: because" in out


def test_a_person_stop_is_recorded_and_no_retry_continues_it(store: JobStore) -> None:
    add_trained_job(store)
    store.set_status("quickstart", JobStatus.STOPPING)
    stopped = store.set_status("quickstart", JobStatus.STOPPED, reason="stop #1 in epoch 3, step 5")
    assert stopped.stopped_by == "user"  # a STOPPED is a person's unless the driver says it was a signal
    # What a RayJob retry or a re-submitted entrypoint runs: it must leave the job as the person left it.
    code, out, _ = invoke("run", str(JOBS / "quickstart.yaml"), "--or-resume", "--store", store.url)
    assert code == 7, out
    assert "left STOPPED: a person stopped it (stop #1 in epoch 3, step 5)" in out
    assert "orchestrator resume quickstart" in out
    state = store.read_state("quickstart")
    assert (state.status, state.stopped_by, state.reason) == (JobStatus.STOPPED, "user", stopped.reason)
    assert store.set_status("quickstart", JobStatus.PENDING).stopped_by is None  # only a STOPPED job has it


@pytest.mark.parametrize("branch", [False, True])
def test_resume_records_its_intent_before_ray_starts_and_undoes_it_when_ray_is_not_there(
    store: JobStore, tmp_path: Path, branch: bool
) -> None:
    """`watch` right after `resume` must see a job about to run (on the branch it will train), not the STOPPED it
    was (Ray takes seconds); a resume that never drives the job leaves it as it was, but for a new branch."""
    add_trained_job(store)
    store.set_status("quickstart", JobStatus.STOPPING)
    store.set_status("quickstart", JobStatus.STOPPED, reason="stop #1 in epoch 3, step 5")
    extra = []
    if branch:  # a snapshot after epoch 2 (a manifest and one file is all a branch needs before Ray)
        state_file = tmp_path / "state.index"
        state_file.write_bytes(b"weights")
        manifest = BackupManifest(
            name="e00002-b0",
            epoch=2,
            attempt=1,
            learning_rate=1e-3,
            files={"state.index": BackupFile(size=7, sha256=file_digest(str(state_file))[1])},
        )
        store.write_snapshot("quickstart", str(tmp_path), manifest, str(state_file))
        extra = ["--from-epoch", "2"]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "resume",
            "quickstart",
            *extra,
            "--store",
            store.url,
            "--address",
            "127.0.0.1:notaport",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while store.read_state("quickstart").status is not JobStatus.PENDING:
            assert process.poll() is None and time.monotonic() < deadline, "resume never recorded its intent"
            time.sleep(0.05)
        origin = "the snapshot after epoch 2" if branch else "the first epoch (no backup)"
        state = store.read_state("quickstart")
        assert state.reason == f"resume requested from STOPPED: starting Ray, then the workers from {origin}"
        if branch:  # what watch shows meanwhile: the live run up to the fork, not the superseded third epoch
            wait_for = time.monotonic() + 30
            while not store.read_branches("quickstart"):
                assert time.monotonic() < wait_for
                time.sleep(0.05)
            assert [r.epoch for r in store.read_history("quickstart")] == [0, 1]
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 6 and "error[cluster]: cannot start or reach Ray (127.0.0.1:notaport)" in err
    state = store.read_state("quickstart")
    if not branch:
        assert (state.status, state.reason, state.stopped_by) == (
            JobStatus.STOPPED,
            "stop #1 in epoch 3, step 5",
            "user",
        )
    else:
        assert state.status is JobStatus.STOPPED and state.reason is not None
        assert state.reason.startswith("resume --from-epoch 2 did not start (cannot start or reach Ray")
        assert store.backup_names("quickstart") == ["e00002-s0000000-b1"]  # `resume` continues the branch


def test_tables_fit_80_columns_piped_and_never_cut_a_job_name(store: JobStore) -> None:
    """list, history and compare at 80 columns, as a pipe sees them: no line wider, no '…', names whole."""
    names = ["optimizers-rmsprop", "transfer-learning-efficientnet-b0-flowers"]
    for name in names:
        add_trained_job(store, name)
        store.append_history(
            name,
            EpochRecord(
                epoch=3,
                attempt=2,
                learning_rate=1e-5,
                end_learning_rate=2e-6,
                seconds=123.4,
                metrics={
                    "loss": 0.5,
                    "accuracy": 0.9,
                    "auc": 0.95,
                    "val_loss": 0.4,
                    "val_accuracy": 0.91,
                    "val_auc": 0.96,
                },
            ),
        )
    store.set_status(names[0], JobStatus.STOPPING)
    store.set_status(names[0], JobStatus.STOPPED)
    for args in (["list"], ["history", names[1]], ["compare", *names]):
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", *args, "--store", store.url],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(REPO)},
            check=False,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert max(len(line.rstrip()) for line in lines) <= 80, result.stdout
        assert "…" not in result.stdout, result.stdout
        if args[0] == "list":
            assert all(any(line.startswith(f"{name} ") for line in lines) for name in names), result.stdout
        if args[0] == "compare":  # too long for a column beside the figures: numbered rows, the names below
            assert lines[-2:] == [f"#{i} {name}" for i, name in enumerate(names, 1)]
    history = subprocess.run(
        [sys.executable, "-m", "orchestrator", "history", names[1], "--store", store.url],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "80"},
    ).stdout
    assert "1e-05→2e-06" in history and "lr a→b: the LR changed inside the epoch" in history  # both LRs shown
    code, out, _ = invoke("history", names[1], "--store", store.url, "--json")  # --json: every key, in full
    last = json.loads(out)["epochs"][-1]
    assert code == 0 and last["end_learning_rate"] == 2e-6 and "val_accuracy" in last["metrics"]
    code, out, _ = invoke("compare", *names, "--store", store.url, "--json")
    assert code == 0 and [row["job"] for row in json.loads(out)["rows"]] == names


def test_compare_says_which_model_was_evaluated_on_the_test_split(store: JobStore) -> None:
    add_trained_job(store, "kept-best", epochs=6)
    add_trained_job(store, "final-only", epochs=6)
    store.write_evaluation(
        "kept-best",
        Evaluation(
            examples=512,
            metrics={"loss": 0.3, "accuracy": 0.9},
            epochs_trained=6,
            model="best",
            model_epoch=4,
        ),
    )
    store.write_evaluation(
        "final-only", Evaluation(examples=512, metrics={"loss": 0.4, "accuracy": 0.8}, epochs_trained=6)
    )
    code, out, _ = invoke("compare", "kept-best", "final-only", "--store", store.url)
    assert code == 0 and "test: kept-best best (epoch 4); final-only final (epoch 6)" in out, out
    code, out, _ = invoke("compare", "kept-best", "final-only", "--store", store.url, "--json")
    rows = json.loads(out)["rows"]
    assert [(r["test_model"], r["test_model_epoch"], r["test_accuracy"]) for r in rows] == [
        ("best", 4, 0.9),
        ("final", 6, 0.8),
    ]
    store.write_evaluation("kept-best", Evaluation(examples=512, metrics={"loss": 0.3}, epochs_trained=6))
    code, out, _ = invoke("compare", "kept-best", "final-only", "--store", store.url)
    assert code == 0 and "test:" not in out  # only the final models: nothing to say


def test_status_and_history_show_an_elastic_jobs_resizes_and_why(store: JobStore) -> None:
    from orchestrator.records import WorkerStart

    add_trained_job(store, "elastic", epochs=3)
    for workers in (2, 1, 2):
        store.start_attempt(
            "elastic",
            start_epoch=0,
            start_step=0,
            restored_from=None,
            startup={},
            workers=[WorkerStart(rank=r, pid=100 + r, node="n", process_started_at=utc_now()) for r in range(workers)],
        )
    store.append_resize("elastic", ResizeRecord(from_workers=2, to_workers=1, reason="1 of 2 worker(s) can be placed"))
    store.append_resize(
        "elastic", ResizeRecord(from_workers=1, to_workers=2, reason="room again", backup="e00002-s0000000")
    )
    code, out, _ = invoke("status", "elastic", "--store", store.url)
    out = " ".join(out.split())  # the grid wraps long values
    assert code == 0
    assert "2 -> 1 worker(s) at " in out and ": 1 of 2 worker(s) can be placed" in out
    assert "1 -> 2 worker(s) at " in out and "(from backup e00002-s0000000): room again" in out
    assert "on 1 worker(s)" in out
    code, out, _ = invoke("history", "elastic", "--store", store.url)
    assert code == 0 and "workers by att: 1: 2, 2: 1, 3: 2 (elastic; `status` says why)" in out
    code, out, _ = invoke("status", "elastic", "--store", store.url, "--json")
    assert [(r["from_workers"], r["to_workers"]) for r in json.loads(out)["resizes"]] == [(2, 1), (1, 2)]


def test_the_live_epoch_line_names_both_lrs_of_an_epoch_that_changed_inside() -> None:
    record = EpochRecord(epoch=4, attempt=1, learning_rate=1e-3, end_learning_rate=2e-4, metrics={}, seconds=1.0)
    assert epoch_line("job", record, 10).startswith("job: epoch 5/10 lr 0.001→0.0002 ")
    assert epoch_line("job", record.model_copy(update={"end_learning_rate": None}), 10).startswith(
        "job: epoch 5/10 lr 0.001 "
    )


def test_a_sweep_run_again_says_which_jobs_it_kept(store: JobStore, tmp_path: Path) -> None:
    from orchestrator.sweep import load_sweep

    specs = load_sweep(JOBS / "optimizer_comparison.yaml", None)
    for index, spec in enumerate(specs):
        store.create_job(spec)
        store.set_status(spec.name, JobStatus.RUNNING, attempt=1)
        store.append_history(
            spec.name,
            EpochRecord(
                epoch=0, attempt=1, learning_rate=1e-3, seconds=1.0, metrics={"loss": 0.5, "val_accuracy": 0.9}
            ),
        )
        if index == 4:  # a person stopped the last one: the sweep leaves it so, and says how to continue it
            store.set_status(spec.name, JobStatus.STOPPING)
            store.set_status(spec.name, JobStatus.STOPPED, reason="stop #1 in epoch 1, step 5")
        else:
            store.set_status(spec.name, JobStatus.SUCCEEDED)
    code, out, err = invoke(
        "sweep", str(JOBS / "optimizer_comparison.yaml"), "--store", store.url, "-o", str(tmp_path / "curves.png")
    )
    assert code == 0, out + err
    for spec in specs[:4]:
        assert f"{spec.name}: kept: it SUCCEEDED in an earlier run of the sweep (1 epoch)" in out
    assert "optimizers-sgd: left STOPPED: a person stopped it (stop #1 in epoch 1, step 5)" in out
    assert store.read_state("optimizers-sgd").status is JobStatus.STOPPED


def test_validate_checks_a_sweep_as_a_sweep_and_run_points_to_sweep(tmp_path: Path) -> None:
    code, out, _ = invoke("validate", str(JOBS / "optimizer_comparison.yaml"))
    assert code == 0 and "sweep 'optimizers': 5 jobs: optimizers-adam (adam 0.001), optimizers-adagrad" in out
    raw = yaml.safe_load((JOBS / "optimizer_comparison.yaml").read_text())
    raw["variants"][4]["optimizer"]["learning_rate"] = -1
    code, _, err = invoke("validate", str(write_spec(tmp_path, raw, "sweep.yaml")))
    assert code == 2 and "1 problem\n  variant sgd: optimizer.learning_rate: got -1, must be greater than 0" in err
    code, _, err = invoke("run", str(JOBS / "optimizer_comparison.yaml"))
    assert code == 2 and "this is a sweep (sweep, base, variants), not a job spec" in err
    assert "hint: run it with: orchestrator sweep " in err
