"""The train step is traced once per compile (``orchestrator/worker/tracing.py``), with the metrics tf_keras
itself would have chosen: real TensorFlow, no Ray (MirroredStrategy on this process's CPU)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration

LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy")


def train(loss: str, prebuild: bool) -> tuple[int, list[dict[str, float]], list[np.ndarray]]:
    """Three steps of a tiny CNN; the train function's trace count, each step's logs and the final weights."""
    import tensorflow as tf
    import tf_keras as keras

    from orchestrator.recipes.models import build_model
    from orchestrator.spec import SmallCNNModel
    from orchestrator.worker.pipeline import EpochPlan, distributed_dataset, make_encoder
    from orchestrator.worker.tracing import build_compiled_containers

    classes = 2 if loss == "binary_crossentropy" else 3
    rng = np.random.default_rng(3)
    images = rng.random((48, 8, 8, 1), dtype=np.float32)
    labels = rng.integers(0, classes, 48).astype(np.int64)
    keras.utils.set_random_seed(5)
    strategy = tf.distribute.MirroredStrategy()
    encode = make_encoder(images_dtype=images.dtype, num_classes=classes, loss=loss, resize=None)
    with strategy.scope():
        model = build_model(
            SmallCNNModel.model_validate({"recipe": "small_cnn", "conv_filters": [4, 8], "dense_units": 8}),
            (8, 8, 1),
            classes,
            binary=loss == "binary_crossentropy",
        )
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=["accuracy"])
        model.optimizer.build(model.trainable_variables)
        if prebuild:
            sample = encode(tf.constant(images[:2]), tf.constant(labels[:2]))[1]
            assert build_compiled_containers(model, sample, logging.getLogger("test"))
    stream = distributed_dataset(
        strategy, images, labels, global_batch=16, seed=1, plan=EpochPlan(0, 1), shuffle=True, encode=encode
    )
    steps: list[dict[str, float]] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: steps.append({k: float(v) for k, v in (logs or {}).items()})
    )
    model.fit(stream, epochs=1, steps_per_epoch=3, callbacks=[record], verbose=0)
    return model.train_function.experimental_get_tracing_count(), steps, model.get_weights()


@pytest.mark.parametrize("loss", LOSSES)
def test_built_containers_trace_the_step_once_and_choose_the_metrics_tf_keras_would(loss: str) -> None:
    traced, steps, weights = train(loss, prebuild=True)
    lazy_traced, lazy_steps, lazy_weights = train(loss, prebuild=False)
    assert traced == 1
    # Why it matters: left to tf_keras, the metrics' variables are made inside the first trace, which is then
    # traced again. If a TensorFlow upgrade stops doing that, this module has no more work to do.
    assert lazy_traced == 2
    # The same metric (sparse, categorical or binary accuracy) and loss, step by step, and the same training.
    assert [sorted(s) for s in steps] == [sorted(s) for s in lazy_steps] == [["accuracy", "loss"]] * 3
    assert steps == lazy_steps
    for built, lazy in zip(weights, lazy_weights, strict=True):
        np.testing.assert_array_equal(built, lazy)


def test_a_model_whose_outputs_are_unknown_is_left_to_tf_keras(caplog: pytest.LogCaptureFixture) -> None:
    import tensorflow as tf
    import tf_keras as keras

    from orchestrator.worker.tracing import build_compiled_containers

    class Subclassed(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs: Any) -> Any:
            return self.dense(inputs)

    model = Subclassed()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with caplog.at_level(logging.DEBUG, logger="test"):
        assert not build_compiled_containers(model, tf.constant([0, 1]), logging.getLogger("test"))
    assert "built at the first step" in caplog.text
    model.fit(np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1]), epochs=1, verbose=0)  # tf_keras builds them
    assert [m.name for m in model.metrics] == ["loss", "accuracy"]
