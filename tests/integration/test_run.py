"""`orchestrator run` end to end: real local Ray, real TensorFlow workers, a real store on disk."""

from __future__ import annotations

import io
import json
import re
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.recipes.datasets import synthetic
from orchestrator.spec import SyntheticData
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import JOBS, quickstart_raw, write_spec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

runner = CliRunner()


def run(spec: Path, store: JobStore, *extra: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["run", str(spec), "--store", store.url, *extra])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(str(tmp_path / "store"))


def test_quickstart_trains_to_success_with_two_synchronised_workers(store: JobStore) -> None:
    code, out, err = run(JOBS / "quickstart.yaml", store, "--set", "monitoring.tensorboard_every_steps=16")
    assert code == 0, out + err
    spec = store.load_job("quickstart").spec

    assert store.read_state("quickstart").status is JobStatus.SUCCEEDED
    history = store.read_history("quickstart")
    assert [record.epoch for record in history] == list(range(spec.epochs))
    assert history[-1].metrics["loss"] < history[0].metrics["loss"] / 2
    assert history[-1].metrics["val_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert all(record.learning_rate == pytest.approx(0.001) for record in history)
    for epoch in range(spec.epochs):
        assert f"quickstart: epoch {epoch + 1}/{spec.epochs} lr 0.001 loss" in out
    assert "job 'quickstart' SUCCEEDED after 6/6 epochs" in out

    summaries = store.read_worker_summaries("quickstart")
    assert [s.rank for s in summaries] == [0, 1] and {s.world_size for s in summaries} == {2}
    assert summaries[0].weights_sha256 == summaries[1].weights_sha256  # MWMS kept the replicas identical
    assert summaries[0].epochs_trained == spec.epochs

    progress = store.read_progress("quickstart")
    assert progress is not None and (progress.epoch, progress.step) == (spec.epochs - 1, progress.steps_per_epoch)
    logs = store.read_logs("quickstart")
    assert {"driver.log", "worker-0.log", "worker-1.log"} <= set(logs)
    assert "trained all 6 epochs in 1 attempt(s)" in logs["driver.log"]
    # the compiled metrics were built before the first step: its train step was traced once (worker/tracing.py)
    assert re.search(r"attempt 1: first training step done .* train step traced 1 time\(s\)", logs["worker-0.log"])
    [attempt] = store.read_attempts("quickstart")
    assert attempt.attempt == 1
    assert {"strategy", "data", "model", "restore"} <= set(attempt.startup) <= {"process", *attempt.startup}
    assert [w.rank for w in attempt.workers] == [0, 1] and len({w.pid for w in attempt.workers}) == 2
    if attempt.workers[0].preloaded_at is None:  # a cold process imported TensorFlow before its training function
        assert attempt.startup["process"] > 1
    else:  # a warm one (the test session's Ray may have one left by an earlier job) had done so in the pool
        assert "process" not in attempt.startup
    for rank in (0, 1):  # one agreement at the first epoch's start, then one per epoch's end (it carries the next
        # epoch's start): 7 for 6 epochs, where agreeing at both each start and each end would be 12
        assert f"rank {rank}: " in logs[f"worker-{rank}.log"]
        assert "(7 at epoch boundaries, " in logs[f"worker-{rank}.log"].split(f"rank {rank}: ")[-1]
    assert store.backup_names("quickstart") == ["e00004-s0000000", "e00005-s0000000", "e00006-s0000000"]

    # Mid-epoch values (progress.json, per-step TensorBoard scalars) are what fit() reports at the epoch's end,
    # not the sum over the two workers' replicas: the last batch of each epoch carries the epoch's values.
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events_file] = Path(store.path("quickstart", "tensorboard")).iterdir()
    events = EventAccumulator(str(events_file), size_guidance={"tensors": 0})
    events.Reload()
    per_step = {
        tag: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(f"step/{tag}")}
        for tag in ("loss", "accuracy")
    }
    assert sorted(per_step["loss"]) == list(range(16, 64 * spec.epochs + 1, 16))
    assert all(0 <= value <= 1 for value in per_step["accuracy"].values())
    assert per_step["loss"][16] < 2.5  # about ln 10 at the start, 2 x ln 10 = 4.6 when summed over the workers
    for record in history:
        for tag in ("loss", "accuracy"):
            assert per_step[tag][64 * (record.epoch + 1)] == pytest.approx(record.metrics[tag], rel=1e-4)


def test_the_saved_model_is_the_trained_model(store: JobStore) -> None:
    raw = quickstart_raw()
    raw.update(name="saved-model", epochs=2)
    raw["scaling"]["workers"] = 1
    code, out, err = run(write_spec(store_root(store), raw), store, "--json")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["status"] == "SUCCEEDED" and result["workers_in_sync"] is True
    import tf_keras as keras

    model = keras.models.load_model(result["model_url"])
    data = synthetic(SyntheticData.model_validate(raw["data"]), seed=raw["seed"])
    # the last epoch's validation ran on these weights: the same examples give the same loss, to float precision
    loss, accuracy = model.evaluate(data.x_val, data.y_val, batch_size=raw["batch_size"], verbose=0)
    assert loss == pytest.approx(result["final_metrics"]["val_loss"], rel=1e-5)
    assert accuracy == pytest.approx(result["final_metrics"]["val_accuracy"], rel=1e-6)
    assert int(model.optimizer.iterations.numpy()) == 2 * raw["data"]["train_examples"] // raw["batch_size"]


def store_root(store: JobStore) -> Path:
    return Path(store.root).parent


def test_user_model_code_from_a_file_beside_the_spec_trains_on_npz_data(store: JobStore, tmp_path: Path) -> None:
    (tmp_path / "my_model.py").write_text(
        textwrap.dedent("""
        import tf_keras as keras

        def build(input_shape, num_classes, width):
            return keras.Sequential([
                keras.Input(shape=input_shape),
                keras.layers.Flatten(),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(num_classes, activation="softmax"),
            ])
    """)
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=600)
    images = (rng.integers(0, 60, size=(600, 6, 6)) + 60 * labels[:, None, None]).astype(np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=images, y_train=np.eye(3)[labels])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "three.npz").write_bytes(buffer.getvalue())
    spec = write_spec(
        tmp_path,
        {
            "name": "custom-code",
            "seed": 1,
            "model": {"function": "my_model.py:build", "params": {"width": 16}},
            "data": {"kind": "npz", "url": "data/three.npz", "validation_split": 0.2},
            "optimizer": {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9},
            "loss": "categorical_crossentropy",
            "epochs": 3,
            "batch_size": 32,
            "scaling": {"workers": 1},
        },
    )
    code, out, err = run(spec, store)
    assert code == 0, out + err
    history = store.read_history("custom-code")
    assert len(history) == 3 and history[-1].metrics["val_accuracy"] > 0.9


def test_an_error_in_user_code_fails_the_job_with_its_traceback(store: JobStore, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def build(input_shape, num_classes):\n    raise ValueError('boom')\n")
    raw = quickstart_raw()
    raw.update(name="broken", model={"function": "broken.py:build"})
    code, _, err = run(write_spec(tmp_path, raw), store)
    assert code == 1
    # every rank runs the same code and raises alike: the first one Ray Train reports is named (a warm process
    # may start, and fail, before a cold one)
    assert re.search(r"error\[user-code\]: rank \d: model\.function broken\.py:build raised ValueError: boom", err)
    assert "raise ValueError('boom')" in err  # the excerpt of the user's own traceback
    assert f"hint: fix {tmp_path / 'broken.py'}; full log: orchestrator logs broken" in err
    assert "Traceback (most recent call last)" not in err.split("error[user-code]")[0]
    state = store.read_state("broken")
    assert state.status is JobStatus.FAILED
    assert re.fullmatch(r"rank \d: model\.function broken\.py:build raised ValueError: boom", state.reason or "")
    assert "ValueError: boom" in store.read_logs("broken")["driver.log"]
    # Ray Train V2 retries every worker error (it cannot tell a bug from a crash): max_failures=3 by default.
    assert store.read_logs("broken")["controller.log"].count("worker group failed") == 4


def test_missing_data_fails_before_any_worker_starts(store: JobStore, tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw.update(name="no-data", data={"kind": "npz", "url": "missing.npz"})
    code, _, err = run(write_spec(tmp_path, raw), store)
    assert code == 5
    assert f"error[data]: data.url: {tmp_path / 'missing.npz'} does not exist" in err
    assert store.read_state("no-data").status is JobStatus.FAILED
    assert store.read_state("no-data").attempt == 0  # no worker was started
    assert store.read_history("no-data") == []


def test_keras_dataset_without_internet_says_how_to_use_a_local_file(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # a closed port: offline even where the internet is
    raw = quickstart_raw()
    raw.update(name="offline", data={"kind": "keras", "name": "fashion_mnist"})
    code, _, err = run(write_spec(tmp_path, raw), store)
    assert code == 5
    assert "error[data]: data.name: could not download keras dataset 'fashion_mnist'" in err
    assert "kind: npz" in err
    assert store.read_state("offline").status is JobStatus.FAILED


def test_a_cached_keras_dataset_is_used_offline_resized_and_validated_on_its_test_split(
    store: JobStore, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=700).astype(np.uint8)
    images = (rng.integers(0, 40, size=(700, 28, 28)) + 20 * labels[:, None, None]).astype(np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=images[:600], y_train=labels[:600], x_test=images[600:], y_test=labels[600:])
    cache = Path(store.root) / "datasets" / "fashion_mnist.npz"  # as a first download would have left it
    cache.parent.mkdir(parents=True)
    cache.write_bytes(buffer.getvalue())
    raw = quickstart_raw()
    raw.update(name="cached-keras", epochs=1, data={"kind": "keras", "name": "fashion_mnist", "resize": [32, 32]})
    raw["scaling"]["workers"] = 1
    code, out, err = run(write_spec(tmp_path, raw), store)
    assert code == 0, out + err
    [record] = store.read_history("cached-keras")
    assert "val_accuracy" in record.metrics  # validated on the set's own test split (100 images: 1 batch)
    assert "600 examples" not in store.read_logs("cached-keras")["worker-0.log"]
    assert "9 steps/epoch of 64 examples, 1 validation steps" in store.read_logs("cached-keras")["worker-0.log"]
    import tf_keras as keras

    model = keras.models.load_model(store.url_of("cached-keras", "model", "final.keras"))
    assert model.input_shape == (None, 32, 32, 1)


@pytest.mark.parametrize(
    ("scaling", "needed"),
    [({"workers": 64}, "64 CPU (64 worker(s) x 1 CPU)"), ({"workers": 1, "gpus_per_worker": 1}, "1 GPU")],
)
def test_a_job_the_local_ray_cannot_place_fails_at_once(
    store: JobStore, tmp_path: Path, scaling: dict[str, int], needed: str
) -> None:
    raw = quickstart_raw()
    raw.update(name="too-big", scaling=scaling)  # batch 64 splits evenly over 64 workers too
    started = time.monotonic()
    code, _, err = run(write_spec(tmp_path, raw), store)
    assert code == 6, err
    assert "error[cluster]: scaling: the job needs" in err and needed in err and "but the Ray cluster has" in err
    assert "lower scaling.workers" in err
    assert time.monotonic() - started < 30  # no waiting for resources that will never come
    state = store.read_state("too-big")
    assert state.status is JobStatus.FAILED and state.reason is not None and "scaling:" in state.reason
