"""The hand-rolled baseline: Ray Train V2 ``TensorflowTrainer`` + tf_keras ``BackupAndRestore`` + ``FailureConfig``.

What a user writes today (``train_func`` and ``run_baseline`` below, minus the lines marked ``# bench:``): the
same model (the orchestrator's ``small_cnn`` builder), the same synthetic data and seed, two workers under
MultiWorkerMirroredStrategy, a ``.repeat()`` dataset with ``steps_per_epoch`` (docs/architecture.md, "A finite
dataset per epoch"), and ``BackupAndRestore(save_freq="epoch")`` to a local folder, which Ray Train's restarts
resume from.

The ``# bench:`` lines are the instrumentation, the same as in the orchestrator's workers: step timestamps
(``bench.instrument``), the build and restore moments, each epoch-end save's duration (one callback before
and one after BackupAndRestore, epoch hooks only), and the moment Ray Train's controller saw a failure.

``variants`` trains several models one after the other in the same worker group (a fresh model each), e.g.
``["none", "epoch", "steps:20"]`` for the checkpoint-overhead figure, alternated in order between rounds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback


def train_func(config: dict[str, Any]) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import ray.train
    import tensorflow as tf
    import tf_keras as keras

    from bench.instrument import EpochEndClock, StepRecorder, instrument  # bench:
    from orchestrator.recipes.datasets import synthetic
    from orchestrator.recipes.models import build_model
    from orchestrator.spec import SmallCNNModel, SyntheticData

    rank = ray.train.get_context().get_world_rank()
    tf.config.threading.set_intra_op_parallelism_threads(config["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(config["threads"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(config["seed"])
    data = synthetic(SyntheticData.model_validate(config["data"]), config["seed"])
    batch, epochs = config["batch_size"], config["epochs"]
    steps = len(data.x_train) // batch
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA

    for variant in config["variants"]:
        folder = Path(config["run_dir"], variant.replace(":", "-"))
        recorder = StepRecorder(str(folder / "steps"), rank)  # bench:
        recorder.event("build_begin")  # bench:
        with strategy.scope():
            model = build_model(
                SmallCNNModel.model_validate(config["model"]), data.input_shape, data.num_classes, binary=False
            )
            recorder.event("build_end")  # bench:
            model.compile(
                optimizer=keras.optimizers.Adam(config["learning_rate"]),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
        instrument(model, recorder)  # bench:
        dataset = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
        dataset = dataset.shuffle(len(data.x_train), seed=config["seed"]).batch(batch, drop_remainder=True)
        dataset = dataset.repeat().with_options(options).prefetch(tf.data.AUTOTUNE)
        callbacks: list[Any] = []
        if variant != "none":
            save_freq: Any = "epoch" if variant == "epoch" else int(variant.split(":")[1])
            callbacks = [
                EpochEndClock(recorder, "save_begin"),  # bench:
                keras.callbacks.BackupAndRestore(str(folder / "backup"), save_freq=save_freq),
                EpochEndClock(recorder, "save_end", restored=True),  # bench:
            ]
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
        recorder.event("fit_end")  # bench:


class FailureClock(UserCallback):
    """Runs in Ray Train's controller: appends the moment it saw each worker-group failure to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"{time.time():.6f}\n")


def run_baseline(
    run_dir: Path,
    *,
    workers: int,
    cpus_per_worker: float,
    variants: list[str],
    settings: dict[str, Any],
    max_failures: int,
) -> None:
    """Train the baseline once per variant in one Ray Train run; raises what ``fit()`` raises."""
    from ray.train.v2.api.config import FailureConfig, RunConfig, ScalingConfig

    from orchestrator.launcher import tensorflow_trainer_class

    TensorflowTrainer = tensorflow_trainer_class()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**settings, "variants": variants, "run_dir": str(run_dir), "threads": max(1, int(cpus_per_worker))}
    TensorflowTrainer(
        train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(
            name=f"baseline-{run_dir.name}",
            storage_path=str(run_dir / "ray"),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=[FailureClock(str(run_dir / "failures.txt"))],  # bench:
        ),
    ).fit()
