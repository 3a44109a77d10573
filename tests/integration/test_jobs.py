"""The jobs in jobs/ run as they are, on tiny synthetic stand-ins (``--set`` shrinks data, model and epochs;
the rest of each spec is the one users run)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.runner import run_job
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import JOBS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

# Fashion-MNIST's shape (32x32x1 after the spec's resize), 10 classes, one-hot labels: like the real thing, small.
FASHION_STAND_IN = [
    "data={kind: synthetic, num_classes: 10, image_shape: [32, 32, 1], train_examples: 512, validation_examples: 128}",
    "model.stages=[1, 1, 1]",
    "model.filters=[8, 8, 16, 32]",
    "epochs=3",
    "batch_size=64",
    "lr_schedule.drops=[{at_epoch: 1, lr: 0.01}, {at_epoch: 2, factor: 0.1}]",
    "backup.snapshot_every_epochs=1",
]


def test_fashion_mnist_resnet_runs_with_its_planned_drops_and_snapshots(tmp_path: Path) -> None:
    """Also watched from another shell while it runs: `watch` in a pseudo-terminal and `logs -f` in a pipe both
    end by themselves when the job ends, `watch` with the job's final status."""
    import os
    import pty
    import subprocess
    import sys
    import threading

    store = JobStore(str(tmp_path / "store"))
    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(
            result=run_job(JOBS / "fashion_mnist_resnet.yaml", store=store, overrides=FASHION_STAND_IN)
        ),
        daemon=True,
    )
    thread.start()
    while "fashion-mnist-resnet" not in store.job_names():
        assert thread.is_alive(), outcome
        time.sleep(0.1)
    command = [sys.executable, "-m", "orchestrator"]
    primary, secondary = pty.openpty()
    watcher = subprocess.Popen(
        [*command, "watch", "fashion-mnist-resnet", "--store", store.url],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        close_fds=True,
    )
    os.close(secondary)
    follower = subprocess.Popen(
        [*command, "logs", "fashion-mnist-resnet", "-f", "--store", store.url], stdout=subprocess.PIPE, text=True
    )
    screen = b""
    while True:  # read the terminal until the watcher exits (EIO once the pty's other end is closed)
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    thread.join(timeout=300)
    assert watcher.wait(timeout=60) == 0
    followed, _ = follower.communicate(timeout=60)
    assert follower.returncode == 0
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", screen).decode(errors="replace")  # no terminal styling
    assert "fashion-mnist-resnet ended SUCCEEDED" in text, text[-2000:]
    assert "worker-0 | " in followed and "rank 0 finished after 3 epochs" in followed
    result = outcome["result"]
    assert result.status is JobStatus.SUCCEEDED and result.workers_in_sync
    history = store.read_history("fashion-mnist-resnet")
    assert [r.learning_rate for r in history] == pytest.approx([0.1, 0.01, 0.001])  # SGD 1e-1, then the drops
    assert [r.segment for r in history] == [0, 1, 2]
    assert [m.epoch for m in store.snapshot_manifests("fashion-mnist-resnet")] == [1, 2, 3]
    plotted = Path(store.path("fashion-mnist-resnet", "plots", "run.png"))  # redrawn by rank 0 every epoch
    assert plotted.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = store.read_logs("fashion-mnist-resnet")["worker-0.log"]
    assert "planned drop at epoch 1: lr 0.01" in log and "planned drop at epoch 2: lr x 0.1" in log


def test_the_optimizer_sweep_runs_five_jobs_and_compares_them(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from orchestrator.cli import app

    store = JobStore(str(tmp_path / "store"))
    figure = tmp_path / "curves.png"
    stand_in = [
        "data={kind: synthetic, train_examples: 512, validation_examples: 128, test_examples: 256}",
        "model={recipe: small_cnn, conv_filters: [8], dense_units: 16}",
        "epochs=2",
        "batch_size=64",
        "scaling.workers=1",  # five jobs: one worker each starts faster; the sweep logic is the same
    ]
    args = ["sweep", str(JOBS / "optimizer_comparison.yaml"), "--store", store.url, "-o", str(figure), "--json"]
    for override in stand_in:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [row["job"] for row in rows] == [f"optimizers-{v}" for v in ("adam", "adagrad", "rmsprop", "nadam", "sgd")]
    import tf_keras as keras

    from orchestrator.recipes.datasets import synthetic

    for row in rows:
        assert row["status"] == "SUCCEEDED" and row["epochs"] == 2
        history = store.read_history(row["job"])
        assert row["best_val_accuracy"] == max(r.metrics["val_accuracy"] for r in history)
        assert row["training_seconds"] == pytest.approx(sum(r.seconds for r in history), abs=0.05)
        # the final model on the held-out split, evaluated here: the same figures the job recorded
        spec = store.load_job(row["job"]).spec
        data = synthetic(spec.data, seed=spec.seed)  # type: ignore[arg-type]
        model = keras.models.load_model(store.url_of(row["job"], "model", "final.keras"))
        loss, accuracy = model.evaluate(data.x_test, data.y_test, batch_size=64, verbose=0)
        assert row["test_loss"] == pytest.approx(loss, rel=1e-5) and row["test_accuracy"] == pytest.approx(accuracy)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert store.fs.exists(store.path("optimizers-adam", "best", "model.keras"))  # best-model checkpoint
    evaluation = store.read_evaluation("optimizers-sgd")
    assert evaluation is not None and evaluation.examples == 256

    compared = CliRunner().invoke(
        app, ["compare", "optimizers-adam", "optimizers-sgd", "--store", store.url], env={"COLUMNS": "200"}
    )
    assert compared.exit_code == 0 and "optimizers-sgd" in compared.stdout and "sgd 0.01" in compared.stdout
