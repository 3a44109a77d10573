"""The LR controller on a real 2-worker job: set-lr and stop from another process, resume with a new LR and
from an earlier snapshot, and a set-lr that a killed worker group replays at the same step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.recipes.datasets import synthetic
from orchestrator.records import Command, CommandAck
from orchestrator.runner import drive_job, resume_job, run_job
from orchestrator.spec import SyntheticData
from orchestrator.spec_loader import load_spec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw, write_spec
from tests.history_checks import assert_each_epoch_trained_once, final_model
from tests.integration.test_preemption import worker_pid

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


def cli(store: JobStore, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, from another process, as a person in a second shell would run it."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args, "--store", store.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def wait_for(condition: Any, thread: threading.Thread, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert thread.is_alive() and time.monotonic() < deadline, f"the job ended or stalled before {what}"
        time.sleep(0.05)


def history_len(store: JobStore, name: str) -> int:
    return len(store.read_history(name)) if name in store.job_names() else 0


def in_epoch(store: JobStore, name: str, epoch: int) -> bool:
    progress = store.read_progress(name) if name in store.job_names() else None
    return progress is not None and progress.epoch == epoch and 0 < progress.step < progress.steps_per_epoch


def test_set_lr_stop_resume_with_lr_and_from_an_earlier_snapshot(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    raw = quickstart_raw()
    raw.update(name="ctrl", epochs=8)
    raw["data"].update(train_examples=4096, validation_examples=512)
    raw["backup"] = {"snapshot_every_epochs": 2}
    spec = write_spec(tmp_path, raw, "ctrl.yaml")
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(first=run_job(spec, store=store)), daemon=True)
    thread.start()

    wait_for(lambda: history_len(store, "ctrl") >= 1, thread, "its first epoch")
    done = cli(store, "set-lr", "ctrl", "3e-4")
    assert done.returncode == 0, done.stderr
    assert "command #1 set-lr 0.0003 recorded" in done.stdout
    wait_for(lambda: 1 in store.read_acks("ctrl"), thread, "the set-lr took effect")
    applied_at = store.read_acks("ctrl")[1]
    assert applied_at.step == 0  # the default: the next epoch boundary
    wait_for(lambda: history_len(store, "ctrl") > applied_at.epoch, thread, "an epoch with the new LR")
    done = cli(store, "stop", "ctrl", "--at-epoch-end")
    assert done.returncode == 0, done.stderr
    assert "at the end of the current epoch" in done.stdout
    thread.join(timeout=300)
    first = outcome["first"]
    assert first.status is JobStatus.STOPPED
    stop_ack = store.read_acks("ctrl")[2]
    status = cli(store, "status", "ctrl")
    assert "#1 set-lr 0.0003: applied after epoch" in status.stdout, status.stdout
    assert "#2 stop --at-epoch-end: applied after epoch" in status.stdout
    assert stop_ack.epoch < 8

    history = store.read_history("ctrl")
    assert all(r.learning_rate == pytest.approx(1e-3) for r in history if r.epoch < applied_at.epoch)
    assert all(r.learning_rate == pytest.approx(3e-4) for r in history if r.epoch >= applied_at.epoch)
    assert {r.segment for r in history if r.epoch >= applied_at.epoch} == {1}
    assert store.read_worker_summaries("ctrl") == []  # written by workers that trained to the end, not on a stop

    resumed = resume_job("ctrl", store=store, learning_rate=1e-4)
    assert resumed.status is JobStatus.SUCCEEDED and resumed.workers_in_sync
    # one continuous run across the stop: no epoch trained twice, the final model's 8 x 64 steps
    history = assert_each_epoch_trained_once(store, "ctrl", 8, 4096 // 64)
    restart = store.read_attempts("ctrl")[1]
    assert restart.start_step == 0  # stopped at an epoch's end
    assert all(r.learning_rate == pytest.approx(1e-4) for r in history if r.epoch >= restart.start_epoch)
    summaries = store.read_worker_summaries("ctrl")
    assert len(summaries) == 2 and all(s.learning_rate == pytest.approx(1e-4) for s in summaries)

    snapshots = cli(store, "snapshots", "ctrl", "--json")
    assert snapshots.returncode == 0, snapshots.stderr
    assert '"epoch": 4' in snapshots.stdout
    exported = tmp_path / "epoch4.keras"
    done = cli(store, "export", "ctrl", str(exported), "--epoch", "4")
    assert done.returncode == 0, done.stderr
    import tf_keras as keras

    # the weights after epoch 4, not the final ones: they give the validation loss recorded at epoch 4's end,
    # and their optimizer had taken 4 epochs of steps
    snapshot = keras.models.load_model(exported)
    assert int(snapshot.optimizer.iterations.numpy()) == 4 * (4096 // 64)
    data = synthetic(SyntheticData.model_validate(raw["data"]), seed=raw["seed"])
    loss, accuracy = snapshot.evaluate(data.x_val, data.y_val, batch_size=64, verbose=0)
    assert loss == pytest.approx(history[3].metrics["val_loss"], rel=1e-5)
    assert accuracy == pytest.approx(history[3].metrics["val_accuracy"], rel=1e-5)

    # the practitioner's "resume from epoch 4 with a new LR", on a finished job
    branched = resume_job("ctrl", store=store, learning_rate=5e-5, from_epoch=4)
    assert branched.status is JobStatus.SUCCEEDED
    # the branch went on from the snapshot's weights and optimizer: 4 + 4 epochs of steps (from the final
    # model's state it would be 12 epochs' worth), and its own epochs each once
    history = assert_each_epoch_trained_once(store, "ctrl", 8, 4096 // 64)
    assert all(r.branch == 1 and r.learning_rate == pytest.approx(5e-5) for r in history if r.epoch >= 4)
    assert all(r.branch == 0 for r in history if r.epoch < 4)
    lines = store.read_history_lines("ctrl")
    superseded = [r for r in lines if r.branch == 0 and r.epoch >= 4]
    assert superseded, "the earlier branch's later epochs are kept"
    assert store.read_attempts("ctrl")[-1].restored_from == "e00004-s0000000-b1"

    # The plot of the whole run: live curves equal the history; markers at the stop, restarts and the branch.
    from orchestrator.commands import run_plot_data

    data = run_plot_data(store, "ctrl", None)
    assert data.lines["loss"] == ([r.epoch + 1 for r in history], [r.metrics["loss"] for r in history])
    assert data.superseded["loss"][0], "the abandoned branch is drawn (faintly)"
    kinds = {(m.kind, m.epoch) for m in data.markers}
    assert ("stop", float(stop_ack.epoch)) in kinds
    assert ("resume", 4.0) in kinds  # the branch from epoch 4
    assert any(m.kind == "lr" for m in data.markers)
    done = cli(store, "plot", "ctrl", "-o", str(tmp_path / "ctrl.png"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ctrl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def spec_for_replay(tmp_path: Path, name: str) -> Path:
    raw = quickstart_raw()
    raw.update(name=name, epochs=3, deterministic=True)
    raw["data"].update(train_examples=8192, validation_examples=512)  # 128 steps an epoch: time to kill
    raw["failures"] = {"max_failures": 2}
    raw["lr_schedule"] = {"drops": [{"at_epoch": 1, "factor": 0.5}]}  # planned, then overridden by hand
    return write_spec(tmp_path, raw, f"{name}.yaml")


def run_in_thread(store: JobStore, drive: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=drive(store)), daemon=True)
    thread.start()
    return thread, outcome


def test_a_set_lr_is_replayed_at_the_same_step_after_a_kill(tmp_path: Path) -> None:
    """Both links: a live ``set-lr --now`` run equals a run that replays its recorded ack, and that run, killed
    after the ack's step and before the epoch's backup, replays it again and still ends with the live run's model.
    (A replay compared only with another replay would pass with every replay off by the same step.)"""
    spec = spec_for_replay(tmp_path, "replay")
    live = JobStore(str(tmp_path / "live"))
    thread, outcome = run_in_thread(live, lambda store: run_job(spec, store=store))
    # inside the second epoch, past its first control point (a progress report comes a second into the epoch):
    # the --now command is then applied inside the epoch, not at its boundary
    wait_for(lambda: in_epoch(live, "replay", 1), thread, "a progress report inside the second epoch")
    live.add_command("replay", Command(seq=1, kind="set_lr", learning_rate=2e-4, when="now"))
    thread.join(timeout=300)
    assert outcome["result"].status is JobStatus.SUCCEEDED and len(live.read_attempts("replay")) == 1
    ack = live.read_acks("replay")[1]
    assert ack.step > 0, "applied inside an epoch (--now)"
    assert "set-lr #1 replayed" not in live.read_logs("replay")["worker-0.log"]  # applied live

    # The same spec with the live run's command and ack recorded: applied at that step as a replay; then a worker
    # is killed after that step, before the epoch's backup, and the restarted group replays it once more.
    store = JobStore(str(tmp_path / "store"))
    store.create_job(load_spec(spec))
    store.add_command("replay", Command(seq=1, kind="set_lr", learning_rate=2e-4, when="now"))
    store.write_ack("replay", CommandAck(seq=1, epoch=ack.epoch, step=ack.step, attempt=1))
    thread, outcome = run_in_thread(store, lambda store: drive_job(store, "replay", on_update=lambda snapshot: None))

    def past_the_ack() -> bool:
        progress = store.read_progress("replay")
        return progress is not None and progress.epoch == ack.epoch and progress.step > ack.step

    wait_for(past_the_ack, thread, "training past the recorded step")
    os.kill(worker_pid(store, "replay", 1), signal.SIGKILL)  # before the epoch's backup
    thread.join(timeout=300)
    assert outcome["result"].status is JobStatus.SUCCEEDED
    attempts = store.read_attempts("replay")
    assert len(attempts) == 2
    assert (attempts[1].start_epoch, attempts[1].start_step) < (ack.epoch, ack.step), "killed after a backup"
    recorded = store.read_acks("replay")[1]
    assert (recorded.epoch, recorded.step, recorded.attempt) == (ack.epoch, ack.step, 1)  # not rewritten
    log = store.read_logs("replay")["worker-0.log"]
    assert log.count("set-lr #1 replayed") >= 2, "replayed by both attempts"

    got, want = store.read_history("replay"), live.read_history("replay")
    assert [r.learning_rate for r in got] == [r.learning_rate for r in want]
    # epoch 1 at the initial LR, epoch 2 from the planned drop (the set-lr came inside it), epoch 3 by hand
    assert [r.learning_rate for r in got] == pytest.approx([1e-3, 5e-4, 2e-4])
    # epoch 2 trained its first steps at 5e-4 and the rest at 2e-4: its line says both, in both runs
    assert (
        [r.end_learning_rate for r in got] == [r.end_learning_rate for r in want] == [None, pytest.approx(2e-4), None]
    )
    replayed, uninterrupted = final_model(store, "replay"), final_model(live, "replay")
    assert int(replayed.optimizer.iterations.numpy()) == int(uninterrupted.optimizer.iterations.numpy()) == 3 * 128
    assert float(replayed.optimizer.learning_rate.numpy()) == pytest.approx(2e-4)
    for a, b in zip(replayed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_branch_from_a_snapshot_trains_as_the_run_that_dropped_its_lr_there(tmp_path: Path) -> None:
    """``resume --from-epoch 2 --lr X`` on a finished job gives, bit for bit (deterministic ops), the model of a
    run that trained the same first two epochs and dropped its LR to X at epoch 2: the branch starts from the
    snapshot's weights and optimizer state, not the final model's or a fresh one's. Also compares the branch's
    first epoch's metrics, so a branch that restored the wrong weights fails here even if later epochs converge."""
    store = JobStore(str(tmp_path / "store"))
    raw = quickstart_raw()
    raw.update(epochs=4, deterministic=True)
    raw["data"].update(train_examples=1024, validation_examples=256)
    raw["backup"] = {"snapshot_every_epochs": 2}
    branched_raw = {**raw, "name": "trunk"}
    dropped_raw = {**raw, "name": "dropped", "lr_schedule": {"drops": [{"at_epoch": 2, "factor": 0.25}]}}
    assert run_job(write_spec(tmp_path, branched_raw, "trunk.yaml"), store=store).status is JobStatus.SUCCEEDED
    assert run_job(write_spec(tmp_path, dropped_raw, "dropped.yaml"), store=store).status is JobStatus.SUCCEEDED

    branched = resume_job("trunk", store=store, learning_rate=2.5e-4, from_epoch=2)
    assert branched.status is JobStatus.SUCCEEDED
    assert store.read_attempts("trunk")[-1].restored_from == "e00002-s0000000-b1"
    steps = 1024 // 64
    history = assert_each_epoch_trained_once(store, "trunk", 4, steps)
    reference = store.read_history("dropped")
    assert [r.learning_rate for r in history] == pytest.approx([r.learning_rate for r in reference])
    assert [r.branch for r in history] == [0, 0, 1, 1]
    for got, want in zip(history, reference, strict=True):  # the branch's first epoch included
        assert got.metrics["loss"] == pytest.approx(want.metrics["loss"], rel=1e-5), got.epoch
        assert got.metrics["val_loss"] == pytest.approx(want.metrics["val_loss"], rel=1e-5), got.epoch
    trunk, dropped = final_model(store, "trunk"), final_model(store, "dropped")
    assert int(trunk.optimizer.iterations.numpy()) == 4 * steps
    for got, want in zip(trunk.get_weights(), dropped.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
