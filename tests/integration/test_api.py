"""The Python API as a notebook uses it, on a real local Ray: a job whose model is a Python function, run end to
end (status, history DataFrame, plot, export, resume from a snapshot with the function again), and a running
job's LR changed from a second process through ``orchestrator.job(name, store).set_lr``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator.errors import UsageError
from orchestrator.status import JobStatus

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]
REPO = Path(__file__).resolve().parents[2]


def tiny_spec(name: str, **changes: Any) -> dict[str, Any]:
    """A job of a few seconds an epoch on one CPU worker: 8 classes of 16x16 synthetic images."""
    spec: dict[str, Any] = {
        "name": name,
        "seed": 3,
        "data": {
            "kind": "synthetic",
            "num_classes": 8,
            "image_shape": [16, 16, 1],
            "train_examples": 512,
            "validation_examples": 128,
            "noise": 0.5,
            "max_shift": 1,
        },
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "epochs": 3,
        "batch_size": 32,
        "scaling": {"workers": 1, "cpus_per_worker": 1},
    }
    return {**spec, **changes}


def test_a_job_with_a_notebook_function_model_end_to_end(tmp_path: Path) -> None:
    import tf_keras as keras

    def build(input_shape: tuple[int, ...], num_classes: int, width: int = 8) -> Any:
        """Defined inside the test, as in a notebook cell: cloudpickle ships it by value."""
        inputs = keras.Input(shape=input_shape)
        x = keras.layers.Conv2D(width, 3, activation="relu", name="notebook_conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x), name="from_notebook")

    store = str(tmp_path / "store")
    spec = orchestrator.load_spec(
        tiny_spec("api-fn", backup={"snapshot_every_epochs": 1}), model={"params": {"width": 6}}, model_fn=build
    )
    job = orchestrator.run(spec, store=store)

    assert job.result is not None and job.result.status is JobStatus.SUCCEEDED, job.result
    status = job.status()
    assert status.state.status is JobStatus.SUCCEEDED and status.epochs_done == 3
    assert "build() (a Python function)" in status.summary
    history = job.history()
    assert list(history["epoch"]) == [1, 2, 3]
    assert {"learning_rate", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(history.columns)
    assert history["learning_rate"].tolist() == pytest.approx([1e-3] * 3)
    figure = job.plot(path=tmp_path / "run.png")
    assert "learning rate" in [line.get_label() for ax in figure.axes for line in ax.get_lines()]
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"

    exported = job.export(tmp_path / "final.keras")
    assert exported.size_bytes > 0
    model = keras.models.load_model(tmp_path / "final.keras")
    assert model.name == "from_notebook" and model.get_layer("notebook_conv").filters == 6  # the params reached it

    # A resume needs the function again (the job's record names it, this process may be another one) ...
    handle = orchestrator.job("api-fn", store=store)
    with pytest.raises(UsageError, match=r"built with the Python function|needs that function again"):
        handle.resume(from_epoch=2)
    assert handle.status().state.status is JobStatus.SUCCEEDED  # nothing changed
    # ... and with it, it branches from the snapshot after epoch 2 with a lower LR, rebuilding the same model.
    handle.resume(1e-4, from_epoch=2, model_fn=build)
    assert handle.result is not None and handle.result.status is JobStatus.SUCCEEDED
    history = handle.history()
    assert list(history["epoch"]) == [1, 2, 3]
    assert history["learning_rate"].tolist() == pytest.approx([1e-3, 1e-3, 1e-4])
    assert list(history["branch"]) == [0, 0, 1]
    assert len(handle.history(superseded=True)) == 4  # the first branch's epoch 3 is kept, marked superseded
    assert "worker-0.log" in handle.logs(["worker"], tail=5)


def second_process(code: str) -> subprocess.CompletedProcess[str]:
    """Python in another process, as a second notebook or a script would run it."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_a_running_jobs_lr_is_changed_from_a_second_process(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    spec = tiny_spec(
        "api-lr",
        model={"recipe": "small_cnn", "conv_filters": [8], "dense_units": 16},
        epochs=8,
        data={**tiny_spec("x")["data"], "train_examples": 2048},
    )
    job = orchestrator.run(spec, store=store, wait=False)
    assert job.running_here and job.status().state.status in (JobStatus.PENDING, JobStatus.RUNNING)

    deadline = time.monotonic() + 300
    while len(job.store.read_history("api-lr")) < 1:
        assert job.running_here and time.monotonic() < deadline, "the job ended or stalled before its first epoch"
        time.sleep(0.1)
    done = second_process(
        f"import orchestrator; print(orchestrator.job('api-lr', store={store!r}).set_lr(3e-4).effect)"
    )
    assert done.returncode == 0, done.stderr
    assert "next epoch boundary" in done.stdout

    result = job.wait(timeout=600)
    assert result.status is JobStatus.SUCCEEDED and result.epochs_done == 8
    applied = job.store.read_acks("api-lr")[1]  # the second process's command, applied at an epoch boundary
    assert 1 <= applied.epoch < 8 and applied.step == 0
    history = job.history()
    rates = dict(zip(history["epoch"], history["learning_rate"], strict=True))
    assert all(rates[e] == pytest.approx(1e-3) for e in rates if e <= applied.epoch), rates
    assert all(rates[e] == pytest.approx(3e-4) for e in rates if e > applied.epoch), rates
    assert job.status().commands[0].command.issued_by is not None
