"""Ctrl+C on `orchestrator run`: the job is recorded as FAILED with the reason, its history kept, exit 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import JOBS, REPO

pytestmark = pytest.mark.integration


def test_ctrl_c_marks_the_job_failed_and_keeps_its_history(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    environment = {**os.environ, "ORCHESTRATOR_STORE": store.url}
    environment.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(JOBS / "quickstart.yaml")],
        cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not store.read_history("quickstart") if store.job_names() else True:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no epoch finished within 240 s"
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out + err
    assert "error[interrupted]: interrupted: job 'quickstart' stopped after" in err
    assert "--name quickstart-2" in err and "Traceback" not in err
    state = store.read_state("quickstart")
    assert state.status is JobStatus.FAILED and state.ended_at is not None
    assert state.reason == "interrupted by the user (Ctrl+C)"
    history = store.read_history("quickstart")
    assert [record.epoch for record in history] == list(range(len(history))) and len(history) < 6
    assert store.load_job("quickstart").spec.epochs == 6  # the record is intact
