"""Mixed precision and XLA on CPU (both policies run here, slowly).

* ``mixed_float16``: tf_keras wraps the optimizer in a LossScaleOptimizer; a live ``set-lr`` reaches its inner
  optimizer; the dynamic loss scale (scale and good steps) is in every backup, so a run whose worker is killed
  ends with the uninterrupted run's weights and loss scale. The killed run replays the reference run's set-lr
  at the same step (its command and ack are recorded in its store first, as in test_lr_control).
* ``mixed_bfloat16`` with ``jit_compile: true``: trains, the softmax output stays float32.
"""

from __future__ import annotations

import glob
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.records import Command, CommandAck
from orchestrator.runner import drive_job, run_job
from orchestrator.spec_loader import load_spec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.worker.backup import CHECKPOINT_PREFIX
from orchestrator.worker.devices import checkpoint_loss_scale
from tests.conftest import quickstart_raw, seeded_delay, write_spec
from tests.history_checks import assert_each_epoch_trained_once, final_model
from tests.integration.test_preemption import worker_pid

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

EPOCHS, STEPS, BATCH = 3, 16, 32
NEW_LR = 4e-4


def spec_for(tmp_path: Path, name: str, **overrides: Any) -> Path:
    raw = quickstart_raw()
    raw.update(name=name, epochs=EPOCHS, batch_size=BATCH, deterministic=True, precision="mixed_float16")
    raw["model"] = {"recipe": "small_cnn", "conv_filters": [8], "dense_units": 16}
    raw["data"].update(train_examples=STEPS * BATCH, validation_examples=BATCH)
    raw["optimizer"] = {"name": "adam", "learning_rate": 0.002}
    raw["backup"] = {"every_epochs": 1, "every_steps": 5, "keep": 2}
    raw["failures"] = {"max_failures": 2}
    raw["monitoring"] = {"tensorboard": False, "plot": False}
    raw.update(overrides)
    return write_spec(tmp_path, raw, f"{name}.yaml")


def last_backup_loss_scale(store: JobStore, job: str) -> tuple[float, int]:
    name = store.backup_names(job)[-1]
    assert name == f"e{EPOCHS:05d}-s0000000", name  # the final backup: both runs end on it
    [index] = glob.glob(os.path.join(store.path(job, "checkpoints", name), f"{CHECKPOINT_PREFIX}*.index"))
    state = checkpoint_loss_scale(index.removesuffix(".index"))
    assert state is not None, f"backup {name} of {job} holds no loss scale"
    return state


def in_training(store: JobStore, job: str) -> bool:
    progress = store.read_progress(job) if job in store.job_names() else None
    return progress is not None and progress.epoch == 0


def test_float16_set_lr_kill_and_resume_keep_the_loss_scale(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "f16")
    live = JobStore(str(tmp_path / "live"))
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run_job(spec, store=live)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not in_training(live, "f16"):
        assert thread.is_alive() and time.monotonic() < deadline, "the job never started training"
        time.sleep(0.05)
    live.add_command("f16", Command(seq=1, kind="set_lr", learning_rate=NEW_LR))  # at the next epoch's end
    thread.join(timeout=300)
    assert outcome["result"].status is JobStatus.SUCCEEDED
    ack = live.read_acks("f16")[1]
    log = live.read_logs("f16")["worker-0.log"]
    assert "precision mixed_float16" in log and "wrapped in a LossScaleOptimizer" in log
    assert "dynamic loss scale 32768, 0 good steps since it last changed (initial)" in log
    reference = final_model(live, "f16")  # loaded here under float32: its optimizer is the inner one
    assert reference.layers[1].compute_dtype == "float16" and reference.get_layer("output").compute_dtype == "float32"
    assert float(reference.optimizer.learning_rate.numpy()) == pytest.approx(NEW_LR)
    rates = [r.learning_rate for r in live.read_history("f16")]
    assert rates[0] == pytest.approx(0.002) and rates[-1] == pytest.approx(NEW_LR)
    want_scale = last_backup_loss_scale(live, "f16")

    store = JobStore(str(tmp_path / "store"))
    store.create_job(load_spec(spec))
    store.add_command("f16", Command(seq=1, kind="set_lr", learning_rate=NEW_LR))
    store.write_ack("f16", CommandAck(seq=1, epoch=ack.epoch, step=ack.step, attempt=1))
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=drive_job(store, "f16", on_update=lambda snapshot: None)), daemon=True
    )
    thread.start()
    while len(store.backup_names("f16")) < 2:
        assert thread.is_alive() and time.monotonic() < deadline + 300, "the job never took two backups"
        time.sleep(0.1)
    time.sleep(seeded_delay(0.0, 0.5, "SIGKILL"))
    os.kill(worker_pid(store, "f16", 1), signal.SIGKILL)
    thread.join(timeout=300)
    assert outcome["result"].status is JobStatus.SUCCEEDED
    attempts = store.read_attempts("f16")
    assert len(attempts) == 2 and attempts[1].restored_from is not None
    assert "good steps since it last changed (restored from the backup)" in store.read_logs("f16")["worker-0.log"]

    resumed = final_model(store, "f16")
    history = assert_each_epoch_trained_once(store, "f16", EPOCHS, STEPS, model=resumed)
    assert [r.learning_rate for r in history] == pytest.approx(rates)
    assert last_backup_loss_scale(store, "f16") == want_scale
    for got, want in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bfloat16_with_xla_trains_with_a_float32_output(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    spec = spec_for(
        tmp_path,
        "bf16",
        epochs=2,
        precision="mixed_bfloat16",
        jit_compile=True,
        deterministic=False,
        backup={},
        scaling={"workers": 1, "cpus_per_worker": 1},
    )
    result = run_job(spec, store=store)
    assert result.status is JobStatus.SUCCEEDED
    log = store.read_logs("bf16")["worker-0.log"]
    assert "precision mixed_bfloat16: layers compute in bfloat16" in log
    assert "train step compiled with XLA (jit_compile)" in log
    model = final_model(store, "bf16")
    assert model.get_layer("output").compute_dtype == "float32" and model.layers[1].compute_dtype == "bfloat16"
    history = store.read_history("bf16")
    assert history[-1].metrics["loss"] < history[0].metrics["loss"]
