"""MLflow tracking through `orchestrator run`, two Ctrl+Cs (a stop without a backup) and `orchestrator resume`: one
run, each epoch once with the record the model descends from (the replayed epoch's second one), the parameters and
the final model, in a real SQLite tracking store."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw, write_spec
from tests.interrupting import run_then_interrupt

pytestmark = pytest.mark.integration
pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[test]' installs mlflow")

EPOCHS = 5


def _replayable(store: JobStore) -> bool:
    """Epoch 3 (index 2) is in the history, the latest backup is from before it, and epoch 4 is underway."""
    if not (store.job_names() and store.backup_names("quickstart")):
        return False
    progress = store.read_progress("quickstart")
    epochs = {r.epoch for r in store.read_history("quickstart")}
    backup = store.read_manifest("quickstart", store.backup_names("quickstart")[-1])
    return progress is not None and 2 in epochs and backup.epoch == 2 and progress.epoch == 3 and progress.step >= 5


def test_one_run_survives_a_stop_without_backup_and_a_resume_with_each_epoch_once(
    tmp_path: Path, ray_cluster: None
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = quickstart_raw()
    raw.update(epochs=EPOCHS, tracking={"mlflow": {"tracking_uri": uri, "experiment": "integration"}})
    raw["data"].update(train_examples=2048, validation_examples=512)
    raw["backup"] = {"every_epochs": 2, "keep": 2}
    spec = write_spec(tmp_path, raw)
    store = JobStore(str(tmp_path / "store"))
    # the second Ctrl+C stops at once: epoch 3's record is not behind any backup
    run_then_interrupt(
        spec,
        store,
        lambda s: True if _replayable(s) else None,
        signals=2,
        within_s=300,
        waiting="epoch 3 never ended with epoch 4 underway within 300 s",
    )
    stopped = store.read_tracking("quickstart")
    assert stopped is not None and len(stopped.runs) == 1 and stopped.runs[0].epochs_logged == 2

    result = CliRunner().invoke(app, ["resume", "quickstart", "--store", store.url])
    assert result.exit_code == 0, result.stdout + result.stderr

    lines = store.read_history_lines("quickstart")
    assert [r.epoch for r in lines].count(2) == 2, "epoch 3 was not trained again: the test proves nothing"
    tracking = store.read_tracking("quickstart")
    assert tracking is not None and [r.run_id for r in tracking.runs] == [stopped.runs[0].run_id]
    run_id = tracking.runs[0].run_id
    client = MlflowClient(tracking_uri=uri)
    live = store.read_history("quickstart")
    for key in ("loss", "val_accuracy", "learning_rate"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        expected = [(r.epoch, r.metrics.get(key, r.learning_rate)) for r in live]
        assert logged == pytest.approx(expected), key
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.name"] == "adam" and run.data.params["epochs"] == str(EPOCHS)
    assert [f.path for f in client.list_artifacts(run_id, "model")] == ["model/final.keras"]
    driver_log = store.read_logs("quickstart")["driver.log"]
    assert "MLflow: logging to experiment 'integration'" in driver_log and "not logged" not in driver_log
