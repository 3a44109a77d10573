"""Ctrl+C training: interrupt `orchestrator run`, then `orchestrator resume` continues from the latest backup.

The first Ctrl+C backs up at the next step and stops: the job is STOPPED (not lost) with the reason, exit 130
and the command to continue, nothing trained is lost, and the resumed run restores that backup and finishes
with one continuous history: every epoch once, in order. A second Ctrl+C stops at once without the backup:
the steps since the latest backup are lost, said and counted, and the stop that never took effect does not
stop the resumed job.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import JOBS
from tests.history_checks import assert_each_epoch_trained_once
from tests.interrupting import run_then_interrupt

pytestmark = pytest.mark.integration


def interrupt(store: JobStore, signals: int) -> tuple[int, str, int]:
    """Run the quickstart job, send ``signals`` SIGINTs 0.05 s apart once a backup exists and training has gone
    20 steps past it; the exit code, the output, and the global step training had reached at the first SIGINT."""
    code, output, reached = run_then_interrupt(
        JOBS / "quickstart.yaml",
        store,
        _past_a_backup,
        signals=signals,
        within_s=240,
        waiting="no backup and training after it within 240 s",
    )
    assert "Traceback" not in output, output
    return code, output, reached


STEPS = 4096 // 64  # the quickstart's steps per epoch


def _past_a_backup(store: JobStore) -> int | None:
    """The global step training has reached once it is 20 steps past the newest backup (a timed backup may
    land mid-epoch on a slow machine), else None."""
    if not (store.job_names() and store.backup_names("quickstart")):
        return None
    progress, records = store.read_progress("quickstart"), store.read_backup_records("quickstart")
    if progress is None or not records:
        return None
    reached = progress.epoch * STEPS + progress.step
    return reached if reached >= records[-1].epoch * STEPS + records[-1].step + 20 else None


def resume(store: JobStore) -> None:
    newest = store.backup_names("quickstart")[-1]
    result = CliRunner().invoke(app, ["resume", "quickstart", "--store", store.url])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "job 'quickstart' SUCCEEDED after 6/6 epochs" in result.stdout
    attempts = store.read_attempts("quickstart")
    assert attempts[-1].restored_from == newest  # the newest backup there was, not just some backup
    history = assert_each_epoch_trained_once(store, "quickstart", 6, 4096 // 64)
    assert {r.attempt for r in history if r.epoch > attempts[-1].start_epoch} == {attempts[-1].attempt}
    assert history[-1].metrics["val_accuracy"] > 0.5


def test_ctrl_c_backs_up_stops_the_job_and_resume_finishes_it_losing_nothing(tmp_path: Path, ray_cluster: None) -> None:
    store = JobStore(str(tmp_path / "store"))
    code, output, reached = interrupt(store, signals=1)
    assert code == 130, output
    assert "warning: Ctrl+C: backing up, then stopping (stop #1)" in output
    assert "error[interrupted]: interrupted: job 'quickstart' is STOPPED after" in output
    assert "; nothing trained was lost" in output and "hint: continue it with: orchestrator resume quickstart" in output
    state = store.read_state("quickstart")
    assert state.status is JobStatus.STOPPED and state.stopped_by == "user"
    assert state.reason is not None and state.reason.startswith("interrupted by the user (Ctrl+C): stop #1 ")
    ack = store.read_acks("quickstart")[1]
    newest = store.read_backup_records("quickstart")[-1]
    assert (newest.epoch, newest.step) == (ack.epoch, ack.step)  # backed up where it stopped (or at the epoch's end)
    assert newest.attempt == 1 and newest.epoch * STEPS + newest.step >= reached  # after the Ctrl+C, not before
    assert store.read_commands("quickstart")[0].issued_by.endswith("(Ctrl+C)")

    resume(store)
    attempts = store.read_attempts("quickstart")
    assert attempts[-1].restored_from == newest.name and attempts[-1].start_step == ack.step
    assert attempts[-1].previous_reached is not None
    result = CliRunner().invoke(app, ["status", "quickstart", "--store", store.url, "--json"])
    assert json.loads(result.stdout)["accounting"]["lost_steps"] == 0


def test_a_second_ctrl_c_stops_at_once_and_the_steps_it_loses_are_counted(tmp_path: Path, ray_cluster: None) -> None:
    store = JobStore(str(tmp_path / "store"))
    code, output, _ = interrupt(store, signals=2)
    assert code == 130, output
    state = store.read_state("quickstart")
    assert state.status is JobStatus.STOPPED
    assert state.reason == "interrupted by the user (Ctrl+C); Ctrl+C again: stopped without a backup"
    match = re.search(r"the (\d+) step\(s\) trained since it are lost", output)
    assert match is not None, output
    status = json.loads(CliRunner().invoke(app, ["status", "quickstart", "--store", store.url, "--json"]).stdout)
    assert status["accounting"]["lost_steps"] >= int(match.group(1)) >= 1  # its progress may be a step newer
    assert 1 not in store.read_acks("quickstart")  # the stop never took effect

    resume(store)  # the pending stop would have stopped it at its first step
    void = store.read_acks("quickstart")[1].void
    assert void == "the job had ended STOPPED before it took effect; resumed since"
    attempts = store.read_attempts("quickstart")
    reached = attempts[-1].previous_reached
    assert reached is not None and reached.attempt == attempts[-2].attempt
    lost = (reached.epoch - attempts[-1].start_epoch) * reached.steps_per_epoch + reached.step - attempts[-1].start_step
    status = json.loads(CliRunner().invoke(app, ["status", "quickstart", "--store", store.url, "--json"]).stdout)
    assert status["accounting"]["lost_steps"] == lost >= 1
