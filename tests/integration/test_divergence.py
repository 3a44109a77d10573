"""A diverged run on a real 2-worker job: an LR so high the loss goes NaN stops the job with the reason and no
backup of the diverged weights; the job stays readable (history, status, plot) and resumes with a lower LR from
the backup taken before the divergence."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.runner import resume_job, run_job
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw, write_spec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


def cli(store: JobStore, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args, "--store", store.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "250"},
    )


def test_a_diverged_job_stops_without_backing_up_nan_weights_and_resumes_with_a_lower_lr(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    raw = quickstart_raw()
    raw.update(name="diverge", epochs=4)
    raw["data"].update(train_examples=2048, validation_examples=256)  # 32 steps an epoch
    raw["optimizer"] = {"name": "sgd", "learning_rate": 0.01}
    raw["lr_schedule"] = {"drops": [{"at_epoch": 2, "lr": 1e9}]}  # two good epochs, then an LR 10^11 too high
    # More steps than an epoch has: the diverged epoch 3 ends (its backup must be refused), epoch 4 stops it.
    raw["callbacks"] = {"terminate_on_nan": {"patience_steps": 40}}
    result = run_job(write_spec(tmp_path, raw, "diverge.yaml"), store=store)

    assert result.status is JobStatus.FAILED
    state = store.read_state("diverge")
    assert state.reason is not None and state.reason.startswith("the loss was nan for 40 step(s) in a row at epoch 4")
    assert "orchestrator resume diverge --lr 1e+08" in state.reason
    assert result.reason == state.reason
    ending = store.read_ending("diverge")
    assert ending is not None and ending.kind == "diverged" and ending.epoch == 3
    assert store.backup_names("diverge")[-1] == "e00002-s0000000"  # the latest is from before the divergence
    assert all(record.epoch <= 2 for record in store.read_backup_records("diverge"))
    log = store.read_logs("diverge")["worker-0.log"]
    assert log.count("backup after epoch 3 (scheduled) not taken: the weights are NaN") == 1
    history = store.read_history("diverge")
    assert [r.epoch for r in history] == [0, 1, 2]
    assert all(math.isfinite(r.metrics["loss"]) for r in history[:2]) and math.isnan(history[2].metrics["loss"])
    progress = store.read_progress("diverge")
    assert progress is not None and math.isnan(progress.metrics["loss"])

    status = cli(store, "status", "diverge")
    assert status.returncode == 0, status.stderr
    assert "FAILED" in status.stdout and "the loss was nan" in status.stdout and "loss nan" in status.stdout
    shown = cli(store, "history", "diverge")
    assert shown.returncode == 0 and "warning" not in shown.stderr, shown.stderr
    assert " nan " in shown.stdout
    plotted = cli(store, "plot", "diverge", "-o", str(tmp_path / "diverge.png"))
    assert plotted.returncode == 0, plotted.stderr

    resumed = resume_job("diverge", store=store, learning_rate=1e-3)
    assert resumed.status is JobStatus.SUCCEEDED and resumed.workers_in_sync
    restart = store.read_attempts("diverge")[1]
    assert (restart.restored_from, restart.start_epoch) == ("e00002-s0000000", 2)
    history = store.read_history("diverge")
    assert [r.epoch for r in history] == [0, 1, 2, 3]
    assert all(math.isfinite(value) for r in history for value in r.metrics.values())
    assert [r.learning_rate for r in history] == pytest.approx([0.01, 0.01, 1e-3, 1e-3])
    assert history[-1].metrics["loss"] < history[0].metrics["loss"]
