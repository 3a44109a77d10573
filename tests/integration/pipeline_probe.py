"""Runs the input pipeline under real TensorFlow and prints what it produced, as JSON (see test_pipeline.py).

A separate process because it configures two logical CPU devices, which TensorFlow allows only before its
runtime starts. Example values stand for their own index, so the stream of indices is what is observed.
"""

from __future__ import annotations

import json
import os
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import numpy as np
import tensorflow as tf

EXAMPLES, GLOBAL_BATCH, SEED, EPOCHS = 70, 8, 11, 3  # 70 // 8 = 8 steps; 6 examples left out per epoch


def main() -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tf_keras as keras

    from orchestrator.worker.pipeline import (
        EpochPlan,
        distributed_dataset,
        epoch_order_fn,
        pipeline_dataset,
        steps_per_epoch,
    )

    indices = np.arange(EXAMPLES)
    images, labels = indices.astype(np.float32).reshape(-1, 1), indices.astype(np.int64)
    steps = steps_per_epoch(EXAMPLES, GLOBAL_BATCH)
    order = epoch_order_fn(EXAMPLES, steps, GLOBAL_BATCH, SEED, shuffle=True)
    expected = [order(tf.constant(e)).numpy().tolist() for e in range(EPOCHS)]
    produced: list[int] = []

    def identity(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return x, y

    def recording(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        def record(batch: tf.Tensor) -> tf.Tensor:
            produced.extend(batch.numpy().tolist())
            return batch

        y = tf.py_function(record, [y], tf.int64)
        y.set_shape([None])
        return x, tf.cast(y, tf.float32)

    def pipeline_batches(pipeline: int, pipelines: int, replicas: int, plan: EpochPlan) -> list[list[int]]:
        context = tf.distribute.InputContext(pipelines, pipeline, replicas)
        dataset = pipeline_dataset(
            context,
            tf.constant(images),
            tf.constant(labels),
            global_batch=GLOBAL_BATCH,
            seed=SEED,
            plan=plan,
            shuffle=True,
            encode=identity,
        )
        return [y.numpy().tolist() for _, y in dataset]

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def mirrored_stream(plan: EpochPlan) -> list[list[int]]:
        dataset = distributed_dataset(
            strategy,
            images,
            labels,
            global_batch=GLOBAL_BATCH,
            seed=SEED,
            plan=plan,
            shuffle=True,
            encode=identity,
        )
        return [[i for r in strategy.experimental_local_results(y) for i in r.numpy().tolist()] for _, y in dataset]

    with strategy.scope():
        model = keras.Sequential([keras.layers.Dense(1, input_shape=(1,))])
        model.compile(optimizer="sgd", loss="mse")
    model.fit(
        distributed_dataset(
            strategy,
            images,
            labels,
            global_batch=GLOBAL_BATCH,
            seed=SEED,
            plan=EpochPlan(0, EPOCHS),
            shuffle=True,
            encode=recording,
        ),
        epochs=EPOCHS,
        steps_per_epoch=steps,
        verbose=0,
    )

    validation = validation_against_evaluate(strategy, keras)

    print(
        json.dumps(
            {
                "validation": validation,
                "steps": steps,
                "expected": expected,
                "mirrored": mirrored_stream(EpochPlan(0, EPOCHS)),
                "mirrored_resumed_at_epoch1_step3": mirrored_stream(EpochPlan(1, EPOCHS, start_step=3)),
                "two_workers": [pipeline_batches(p, 2, 2, EpochPlan(0, EPOCHS)) for p in range(2)],
                "two_workers_two_gpus_each": [pipeline_batches(p, 2, 4, EpochPlan(0, 1)) for p in range(2)],
                "fit_produced": produced,
            }
        )
    )


def validation_against_evaluate(strategy: tf.distribute.Strategy, keras: Any) -> dict[str, Any]:
    """Train with StreamValidation, then evaluate the same weights on the same data with Keras itself."""
    from orchestrator.worker.pipeline import EpochPlan, distributed_dataset, make_encoder
    from orchestrator.worker.validation import StreamValidation

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=400)
    x = (rng.normal(size=(400, 4)) + y[:, None]).astype(np.float32)
    encode = make_encoder(images_dtype=x.dtype, num_classes=3, loss="sparse_categorical_crossentropy", resize=None)
    x_val, y_val = x[320:], y[320:]

    def stream(images: np.ndarray, labels: np.ndarray, epochs: int, shuffle: bool) -> Any:
        return distributed_dataset(
            strategy,
            images,
            labels,
            global_batch=16,
            seed=1,
            plan=EpochPlan(0, epochs),
            shuffle=shuffle,
            encode=encode,
        )

    with strategy.scope():
        model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(
        stream(x[:320], y[:320], 3, True),
        epochs=3,
        steps_per_epoch=20,
        verbose=0,
        callbacks=[StreamValidation(stream(x_val, y_val, 3, False), steps=5)],
    )
    evaluated = model.evaluate(stream(x_val, y_val, 1, False), steps=5, return_dict=True, verbose=0)
    return {
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "evaluate": {k: float(v) for k, v in evaluated.items()},
    }


if __name__ == "__main__":
    main()
