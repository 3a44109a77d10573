"""Several replicas per worker, on CPU: the multi-GPU path (``gpus_per_worker: N``) without a GPU.

``scaling.cpu_replicas_per_worker`` splits each worker's CPU into logical devices, one replica each, so that
MirroredStrategy (one worker) and MultiWorkerMirroredStrategy (several) run several local replicas with mirrored
variables and a cross-replica all-reduce, as they do on GPUs. What the product promises for GPU jobs must hold:

* a global batch is the same examples whatever the layout, split over workers x replicas: one worker x 4
  replicas and 2 x 2 train to the weights of 1 x 1 (within float tolerance: the all-reduce sums in another
  order);
* backups of mirrored variables are taken and restored, and a worker killed mid-epoch resumes to the weights of
  the uninterrupted run;
* the records and ``status`` count replicas, not workers.

Layouts are kept to at most 2 worker processes (this machine has 2 cores): 4 x 1 is left out (2 x 1 against
1 x 1 is what every multi-worker test here already relies on).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.runner import run_job
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw, seeded_delay, write_spec
from tests.history_checks import assert_each_epoch_trained_once, final_model
from tests.integration.test_preemption import worker_pid

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

BATCH = 32


def spec_for(tmp_path: Path, name: str, workers: int, replicas: int, **overrides: Any) -> Path:
    raw = quickstart_raw()
    raw.update(name=name, epochs=1, batch_size=BATCH, deterministic=True)
    raw["model"] = {"recipe": "small_cnn", "conv_filters": [8], "dense_units": 16}
    raw["data"].update(train_examples=4 * BATCH, validation_examples=BATCH)
    raw["optimizer"] = {"name": "sgd", "learning_rate": 0.05}  # the update is the gradient: compared directly
    raw["scaling"] = {"workers": workers, "cpus_per_worker": 1, "cpu_replicas_per_worker": replicas}
    raw["monitoring"] = {"tensorboard": False, "plot": False}
    raw.update(overrides)
    return write_spec(tmp_path, raw, f"{name}.yaml")


def test_every_layout_trains_the_same_weights(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "store"))
    weights = {}
    for workers, replicas in [(1, 1), (1, 4), (2, 2)]:
        name = f"layout-{workers}x{replicas}"
        result = run_job(spec_for(tmp_path, name, workers, replicas), store=store)
        assert result.status is JobStatus.SUCCEEDED, name
        [attempt] = store.read_attempts(name)
        assert attempt.replicas == workers * replicas
        log = store.read_logs(name)["worker-0.log"]
        assert f"rank 0/{workers} on " in log and f": {workers * replicas} replicas," in log
        if replicas > 1:
            assert f"CPU split into {replicas} logical devices" in log
        model = final_model(store, name)
        assert int(model.optimizer.iterations.numpy()) == 4  # 4 global batches of 32, whatever the split
        weights[(workers, replicas)] = model.get_weights()
    one = weights.pop((1, 1))
    for layout, got in weights.items():
        for a, b in zip(got, one, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"layout {layout}")


def test_killed_worker_with_two_replicas_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """2 workers x 2 replicas: backups inside epochs, a worker SIGKILLed, the resumed run ends as the reference."""
    store = JobStore(str(tmp_path / "store"))
    settings = {
        "epochs": 3,
        "backup": {"every_epochs": 100, "every_steps": 3, "keep": 2},
        "failures": {"max_failures": 2},
        "optimizer": {"name": "adam", "learning_rate": 0.002},  # slots: mirrored optimizer state in the backup
    }
    reference = run_job(spec_for(tmp_path, "reference", 2, 2, **settings), store=store)
    assert reference.status is JobStatus.SUCCEEDED

    outcome: dict[str, Any] = {}
    spec = spec_for(tmp_path, "killed", 2, 2, **settings)
    thread = threading.Thread(target=lambda: outcome.update(result=run_job(spec, store=store)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while len(store.backup_names("killed") if "killed" in store.job_names() else []) < 2:
        assert thread.is_alive() and time.monotonic() < deadline, "the job never took two backups"
        time.sleep(0.1)
    time.sleep(seeded_delay(0.0, 0.5, "SIGKILL"))
    os.kill(worker_pid(store, "killed", 1), signal.SIGKILL)
    thread.join(timeout=180)
    assert not thread.is_alive(), "the job did not finish after the kill"
    assert outcome["result"].status is JobStatus.SUCCEEDED

    attempts = store.read_attempts("killed")
    assert len(attempts) == 2 and attempts[1].restored_from is not None
    assert [a.replicas for a in attempts] == [4, 4]
    steps = 4  # 128 examples / 32
    resumed, uninterrupted = final_model(store, "killed"), final_model(store, "reference")
    assert_each_epoch_trained_once(store, "killed", 3, steps, model=resumed)
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    progress = store.read_progress("killed")
    assert progress is not None and progress.replicas == 4
    shown = CliRunner().invoke(app, ["status", "killed", "--store", store.url])
    assert shown.exit_code == 0, shown.output
    assert "on 4 replica(s)" in shown.output and "2 CPU replicas (testing) = 4 replicas" in shown.output
