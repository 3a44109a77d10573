"""The rank-0 progress callback with real TensorFlow: what a batch reports is what ``fit()`` reports for the epoch.

Under MultiWorkerMirroredStrategy tf_keras hands every batch callback the SUM over the replicas of metrics each
replica already computed over all of them (loss and accuracy doubled with two workers). Checked here with two
worker processes on this machine (MultiWorkerMirroredStrategy through ``TF_CONFIG``, as Ray Train sets it) and
with one worker of two replicas (two logical CPU devices under MirroredStrategy, which must be set before
TensorFlow starts: hence fresh interpreters). The per-step TensorBoard scalars come from the same numbers as
``progress.json``, so every batch's values are read back from the event file.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.store import JobStore
from tests.conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import logging, os, sys
    import numpy as np
    import tensorflow as tf
    import yaml

    store_url, mode = sys.argv[1], sys.argv[2]
    if mode == "replicas":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import tf_keras as keras

    from orchestrator.spec import JobSpec
    from orchestrator.store import JobStore
    from orchestrator.worker.progress import ProgressCallback
    from orchestrator.worker.store_writer import StoreWriter
    from orchestrator.worker.tensorboard import TensorBoardWriter

    assert strategy.num_replicas_in_sync == 2
    rank = strategy.cluster_resolver.task_id if mode == "workers" else 0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("float32")[:, None]
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, "sigmoid")])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy",
                      metrics=["accuracy", keras.metrics.AUC(name="auc")])
    callbacks = []
    if rank == 0:
        store = JobStore(store_url)
        store.create_job(JobSpec.model_validate({**yaml.safe_load(open("jobs/quickstart.yaml")), "name": "progress"}))
        writer = StoreWriter(store, "progress", log_name="worker-0.log")
        board = TensorBoardWriter(store, "progress", 1, logging.getLogger("test"))
        callbacks.append(ProgressCallback(writer, attempt=1, epochs=2, steps_per_epoch=16, global_batch=32,
                                          interval_s=1e-9, tensorboard=board, tensorboard_every=1))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat().with_options(options)
    model.fit(data, epochs=2, steps_per_epoch=16, callbacks=callbacks, verbose=0)
    if rank == 0:
        writer.flush()
        board.close()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("mode", ["workers", "replicas"])
def test_a_batch_reports_the_running_metrics_over_every_replica(tmp_path: Path, mode: str) -> None:
    """2 workers of one replica (MultiWorkerMirroredStrategy), and one worker of 2 replicas (MirroredStrategy)."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    store = JobStore(str(tmp_path / "store"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    envs = [env]
    if mode == "workers":
        workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        envs = [
            {
                **env,
                "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}),
            }
            for rank in range(2)
        ]
    command = [sys.executable, str(script), store.url, mode]
    processes = [
        subprocess.Popen(command, cwd=REPO, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for e in envs
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]

    [file] = Path(store.path("progress", "tensorboard")).iterdir()
    events = EventAccumulator(str(file), size_guidance={"tensors": 0})
    events.Reload()

    def scalars(tag: str) -> dict[int, float]:
        return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}

    loss, accuracy, auc = scalars("step/loss"), scalars("step/accuracy"), scalars("step/auc")
    assert sorted(loss) == sorted(accuracy) == sorted(auc) == list(range(1, 33))
    history = store.read_history("progress")
    assert [r.epoch for r in history] == [0, 1]
    for record in history:  # the epoch's last batch: its running values are the epoch's
        last = (record.epoch + 1) * 16
        assert loss[last] == pytest.approx(record.metrics["loss"], rel=1e-5)
        assert accuracy[last] == pytest.approx(record.metrics["accuracy"], rel=1e-5)
        assert auc[last] == pytest.approx(record.metrics["auc"], rel=1e-5)
    # every batch in range; the first one's loss near ln 2 (two classes, an untrained model), never twice it
    assert all(0 <= value <= 1 for value in [*accuracy.values(), *auc.values()])
    assert loss[1] < 1.5 * math.log(2)
