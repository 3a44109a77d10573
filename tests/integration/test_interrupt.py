"""Ctrl+C training: interrupt `orchestrator run`, then `orchestrator resume` continues from the latest backup.

The job is STOPPED (not lost) with the reason, exit 130 and the command to continue; the resumed run restores
the newest backup and finishes with one continuous history: every epoch once, in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import JOBS, REPO

pytestmark = pytest.mark.integration


def test_ctrl_c_stops_the_job_and_resume_finishes_it(tmp_path: Path, ray_cluster: None) -> None:
    store = JobStore(str(tmp_path / "store"))
    environment = {**os.environ, "ORCHESTRATOR_STORE": store.url}
    environment.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(JOBS / "quickstart.yaml")],
        cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (store.job_names() and store.backup_names("quickstart")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no backup within 240 s"
            time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out + err
    assert "error[interrupted]: interrupted: job 'quickstart' is STOPPED after" in err
    assert "its latest backup is e0000" in err and "hint: continue it with: orchestrator resume quickstart" in err
    assert "Traceback" not in err
    state = store.read_state("quickstart")
    assert state.status is JobStatus.STOPPED and state.reason == "interrupted by the user (Ctrl+C)"
    epochs_before = len(store.read_history("quickstart"))
    assert 1 <= epochs_before < 6

    result = CliRunner().invoke(app, ["resume", "quickstart", "--store", store.url])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "job 'quickstart' SUCCEEDED after 6/6 epochs" in result.stdout
    history = store.read_history("quickstart")
    assert [record.epoch for record in history] == list(range(6))
    attempts = store.read_attempts("quickstart")
    assert attempts[-1].restored_from is not None and attempts[-1].start_epoch >= 1
    assert {r.attempt for r in history if r.epoch >= attempts[-1].start_epoch} == {attempts[-1].attempt}
    assert (
        "resume requested from STOPPED (interrupted by the user (Ctrl+C))"
        in store.read_logs("quickstart")["driver.log"]
    )
    assert history[-1].metrics["val_accuracy"] > 0.5
