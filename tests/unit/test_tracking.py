"""MLflow tracking against a real MLflow (a SQLite tracking store in tmp_path): one run per branch kept in the
store, each epoch logged once (the record the model descends from), the models, and failures that never reach
the job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import SpecError
from orchestrator.records import BackupManifest, EpochRecord
from orchestrator.spec import JobSpec, MlflowSpec
from orchestrator.spec_loader import load_spec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.tracking import MlflowTracker, TrackingThread, resolve_uri, settled, tracker_for
from tests.conftest import quickstart_raw, write_spec

pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[test]' installs mlflow")

from mlflow.tracking import MlflowClient


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"


@pytest.fixture
def store(tmp_path: Path, uri: str) -> JobStore:
    (tmp_path / "mlflow").mkdir()
    store = JobStore(f"file://{tmp_path / 'store'}")
    raw = {**quickstart_raw(), "tracking": {"mlflow": {"tracking_uri": uri, "experiment": "tests"}}}
    store.create_job(JobSpec.model_validate(raw))
    return store


def epoch(store: JobStore, number: int, attempt: int, loss: float, branch: int = 0) -> None:
    metrics = {"loss": loss, "accuracy": 0.5, "val_loss": loss + 0.1}
    store.append_history(
        "quickstart",
        EpochRecord(epoch=number, attempt=attempt, learning_rate=0.001, metrics=metrics, seconds=1.5, branch=branch),
    )


def backup(store: JobStore, tmp_path: Path, at_epoch: int, step: int = 0) -> None:
    manifest = BackupManifest(name=f"e{at_epoch:05d}-s{step:07d}", epoch=at_epoch, step=step, attempt=1,
                              learning_rate=0.001, files={})  # fmt: skip
    store.write_backup("quickstart", str(tmp_path), manifest)


def logged(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def tracker(store: JobStore, uri: str) -> MlflowTracker:
    made, problem = tracker_for(store, "quickstart")
    assert problem is None and made is not None and made.tracking_uri == uri
    return made


def test_only_epochs_behind_a_backup_are_logged_and_a_replayed_one_once_with_its_final_record(
    store: JobStore, uri: str, tmp_path: Path
) -> None:
    for number, loss in enumerate([1.0, 0.8, 0.7]):
        epoch(store, number, 1, loss)
    backup(store, tmp_path, 2)  # epoch 3 (index 2) is not behind a backup: a restart would train it again
    first = tracker(store, uri).sync()
    assert first.epochs_logged == [0, 1] and first.run_status == "RUNNING"
    kept = store.read_tracking("quickstart")
    assert kept is not None and [r.run_id for r in kept.runs] == [first.run_id]

    epoch(store, 2, 2, 0.65)  # attempt 2 restored from the backup at epoch 2 and trained epoch 2 again
    epoch(store, 3, 2, 0.6)
    backup(store, tmp_path, 3, step=7)  # mid-epoch: epoch 3 is not settled yet
    again = tracker(store, uri).sync()  # another process (a resume): the same run
    assert again.run_id == first.run_id and again.epochs_logged == [2]

    final = tracker(store, uri).sync(JobStatus.SUCCEEDED)
    assert final.epochs_logged == [3] and final.run_status == "FINISHED"
    assert logged(uri, first.run_id, "loss") == [(0, 1.0), (1, 0.8), (2, 0.65), (3, 0.6)]
    assert [step for step, _ in logged(uri, first.run_id, "learning_rate")] == [0, 1, 2, 3]
    run = MlflowClient(tracking_uri=uri).get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.name"] == "adam" and run.data.params["batch_size"] == "64"
    assert run.data.params["epochs"] == str(store.load_job("quickstart").spec.epochs)
    assert {"precision", "scaling.workers", "optimizer.learning_rate", "model.recipe"} <= set(run.data.params)


def test_epochs_logged_before_the_store_heard_of_it_are_not_logged_again(
    store: JobStore, uri: str, tmp_path: Path
) -> None:
    for number in range(3):
        epoch(store, number, 1, 1.0 - number / 10)
    backup(store, tmp_path, 3)
    first = tracker(store, uri).sync()
    kept = store.read_tracking("quickstart")
    assert kept is not None
    lost = kept.runs[0].model_copy(update={"epochs_logged": 0})  # the driver died before writing tracking.json
    store.write_tracking("quickstart", kept.model_copy(update={"runs": [lost]}))
    assert tracker(store, uri).sync().epochs_logged == []
    assert [step for step, _ in logged(uri, first.run_id, "loss")] == [0, 1, 2]


def test_the_models_are_artifacts_of_the_run_at_the_end(store: JobStore, uri: str, tmp_path: Path) -> None:
    epoch(store, 0, 1, 1.0)
    for parts, content in ((("model", "final.keras"), b"final"), (("best", "model.keras"), b"best")):
        source = tmp_path / parts[-1]
        source.write_bytes(content)
        store.upload_file("quickstart", str(source), *parts)
    stopped = tracker(store, uri).sync(JobStatus.STOPPED)
    assert stopped.models_logged == ["best"] and stopped.run_status == "KILLED"  # a stopped job has no final model
    done = tracker(store, uri).sync(JobStatus.SUCCEEDED)
    assert done.models_logged == ["final", "best"] and done.epochs_logged == [0]
    client = MlflowClient(tracking_uri=uri)
    paths = {f.path for folder in ("model", "best", "job") for f in client.list_artifacts(done.run_id, folder)}
    assert paths == {"model/final.keras", "best/model.keras", "job/spec.json"}
    local = client.download_artifacts(done.run_id, "model/final.keras", str(tmp_path / "back"))
    assert Path(local).read_bytes() == b"final"
    assert str(tmp_path / "mlflow" / "mlartifacts") in client.get_run(done.run_id).info.artifact_uri


def test_a_branch_is_a_child_run_with_the_lineage_of_its_model(store: JobStore, uri: str, tmp_path: Path) -> None:
    for number in range(4):
        epoch(store, number, 1, 1.0 - number / 10)
    original = tracker(store, uri).sync(JobStatus.SUCCEEDED)
    store.add_branch("quickstart", from_epoch=2, snapshot="e00002-s0000000")
    epoch(store, 2, 2, 0.5, branch=1)
    child = tracker(store, uri).sync(JobStatus.SUCCEEDED)
    assert child.run_id != original.run_id and child.parent_run_id == original.run_id and child.branch == 1
    assert logged(uri, child.run_id, "loss") == [(0, 1.0), (1, 0.9), (2, 0.5)]
    assert logged(uri, original.run_id, "loss") == [(0, 1.0), (1, 0.9), (2, 0.8), (3, 0.7)]  # untouched
    tags = MlflowClient(tracking_uri=uri).get_run(child.run_id).data.tags
    assert tags["mlflow.parentRunId"] == original.run_id and tags["orchestrator.from_epoch"] == "2"


def test_a_tracking_store_that_fails_is_logged_once_and_never_raised(store: JobStore, tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    broken = MlflowTracker(store, "quickstart", f"sqlite:///{tmp_path / 'not-a-folder' / 'x.db'}", "tests")
    lines: list[str] = []
    thread = TrackingThread(broken, lines.append, interval_s=0.05)
    thread.start()
    thread.finish(JobStatus.SUCCEEDED, timeout_s=60)
    assert len(lines) == 1 and lines[0].startswith("MLflow: not logged (")
    assert store.read_tracking("quickstart") is None


@pytest.mark.parametrize(
    ("spec", "environ", "config", "expected"),
    [
        ({"tracking_uri": "sqlite:///a.db"}, {"MLFLOW_TRACKING_URI": "http://x"}, "http://c", ("sqlite:///a.db", None)),
        ({"tracking_uri": "env:TRACK"}, {"TRACK": "http://t:5000"}, None, ("http://t:5000", None)),
        ({"tracking_uri": "env:TRACK"}, {}, None, (None, "env:TRACK: the environment variable TRACK is not set")),
        ({}, {"MLFLOW_TRACKING_URI": "http://x"}, "http://c", ("http://x", None)),
        ({}, {}, "http://c", ("http://c", None)),
    ],
)
def test_the_tracking_uri_by_precedence(
    spec: dict[str, Any], environ: dict[str, str], config: str | None, expected: tuple[str | None, str | None]
) -> None:
    assert resolve_uri(MlflowSpec.model_validate(spec), config, environ) == expected


def test_without_a_uri_anywhere_the_default_is_a_sqlite_file_in_the_home_folder() -> None:
    uri, _ = resolve_uri(MlflowSpec(), None, {})
    assert uri is not None and uri.startswith("sqlite:///") and uri.endswith("/.orchestrator/mlflow.db")


def test_settled_epochs() -> None:
    history = [EpochRecord(epoch=e, attempt=1, learning_rate=0.1, metrics={}, seconds=1) for e in range(3)]
    assert settled(history, None, JobStatus.RUNNING) == 0
    assert settled(history, 2, JobStatus.FAILED) == 2
    assert settled(history[:1], 2, JobStatus.RUNNING) == 1  # the backup is there before the epoch's record
    assert settled(history, 2, JobStatus.SUCCEEDED) == 3


def test_a_bad_tracking_section_is_a_one_line_spec_error(tmp_path: Path) -> None:
    raw = {**quickstart_raw(), "tracking": {"mlflow": {"tracking_uri": "env:9BAD", "colour": "red"}}}
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, raw))
    text = "\n".join(caught.value.problems)
    assert "tracking.mlflow.tracking_uri" in text and "env:9BAD" in text
    assert "tracking.mlflow.colour" in text


def test_mlflow_sync_logs_a_finished_job_and_says_so_in_json(store: JobStore, uri: str, tmp_path: Path) -> None:
    for number in range(2):
        epoch(store, number, 1, 1.0 - number / 10)
    store.set_status("quickstart", JobStatus.RUNNING)
    store.set_status("quickstart", JobStatus.SUCCEEDED)
    result = CliRunner().invoke(app, ["mlflow-sync", "quickstart", "--store", store.url, "--json"])
    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)
    assert output["epochs_logged"] == [0, 1] and output["run_status"] == "FINISHED"
    again = CliRunner().invoke(app, ["mlflow-sync", "quickstart", "--store", store.url, "--json"])
    assert json.loads(again.stdout)["epochs_logged"] == [] and json.loads(again.stdout)["run_id"] == output["run_id"]


def test_mlflow_sync_without_a_usable_uri_is_a_one_line_error(tmp_path: Path) -> None:
    store = JobStore(f"file://{tmp_path / 'store'}")
    raw = {**quickstart_raw(), "tracking": {"mlflow": {"tracking_uri": "env:NOT_SET_ANYWHERE"}}}
    store.create_job(JobSpec.model_validate(raw))
    result = CliRunner().invoke(app, ["mlflow-sync", "quickstart", "--store", store.url])
    assert result.exit_code != 0 and "is PENDING: its driver logs it" in result.output  # no driver ever ended it
    store.set_status("quickstart", JobStatus.RUNNING)
    store.set_status("quickstart", JobStatus.FAILED)
    result = CliRunner().invoke(app, ["mlflow-sync", "quickstart", "--store", store.url])
    assert result.exit_code != 0
    assert "NOT_SET_ANYWHERE" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 2  # the error and its hint


def test_epochs_trained_again_after_a_restore_from_an_older_backup_are_logged_again_with_their_new_values(
    store: JobStore, uri: str, tmp_path: Path
) -> None:
    for number, loss in enumerate([1.0, 0.8, 0.7, 0.6]):
        epoch(store, number, 1, loss)
    backup(store, tmp_path, 1)
    backup(store, tmp_path, 4)
    first = tracker(store, uri).sync()
    assert first.epochs_logged == [0, 1, 2, 3]
    # the backup at epoch 4 is found damaged: attempt 2 restores the one at epoch 1 and trains epochs 2-4 again
    epoch(store, 1, 2, 0.79)
    epoch(store, 2, 2, 0.69)
    epoch(store, 3, 2, 0.59)
    again = tracker(store, uri).sync()
    assert (again.epochs_logged, again.epochs_logged_again) == ([], [1, 2, 3])
    assert "epoch(s) 2, 3, 4 again, trained again after a restore from an older backup" in again.render()
    backup(store, tmp_path, 5)
    epoch(store, 4, 2, 0.5)
    final = tracker(store, uri).sync(JobStatus.SUCCEEDED)
    assert (final.epochs_logged, final.epochs_logged_again) == ([4], [])
    history = MlflowClient(tracking_uri=uri).get_metric_history(first.run_id, "loss")
    latest = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}  # MLflow's latest per step
    assert latest == {0: 1.0, 1: 0.79, 2: 0.69, 3: 0.59, 4: 0.5}
    assert tracker(store, uri).sync(JobStatus.SUCCEEDED).epochs_logged_again == []  # each once
