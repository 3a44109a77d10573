"""Every fit() of an attempt reads the same tensors of the data: each array is copied into TensorFlow once."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def test_streams_share_one_tensor_per_array_and_yield_the_same_batches_as_fresh_copies() -> None:
    import tensorflow as tf

    from orchestrator.worker.pipeline import EpochPlan, Tensors, distributed_dataset, make_encoder

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x = np.random.default_rng(0).random((128, 4, 4, 1)).astype(np.float32)
    y = (np.arange(128) % 3).astype(np.int64)
    encode = make_encoder(images_dtype=x.dtype, num_classes=3, loss="sparse_categorical_crossentropy", resize=None)
    tensors = Tensors()
    assert tensors(x) is tensors(x) and tensors(y) is tensors(y)  # converted once
    assert tensors(x.copy()) is not tensors(x)  # another array (equal values): its own tensor

    def batches(plan: EpochPlan, kept: Tensors | None) -> list[np.ndarray]:
        stream = distributed_dataset(
            strategy, x, y, global_batch=32, seed=3, plan=plan, shuffle=True, encode=encode, tensors=kept
        )
        return [batch[0].numpy() for batch in stream]

    partial, rest = EpochPlan(0, 1, start_step=2), EpochPlan(1, 3)  # a resumed partial epoch, then the rest
    for plan in (partial, rest):
        shared, fresh = batches(plan, tensors), batches(plan, None)
        assert len(shared) == len(fresh) > 0
        for a, b in zip(shared, fresh, strict=True):
            np.testing.assert_array_equal(a, b)


def test_copies_started_early_are_the_tensors_the_streams_read_and_an_error_in_one_is_raised_where_needed() -> None:
    import tensorflow as tf

    from orchestrator.worker.pipeline import Tensors

    x = np.random.default_rng(1).random((64, 8)).astype(np.float32)
    y = np.arange(64)
    tensors = Tensors()
    tensors.start(x, y)
    tensors.start(x)  # begun already: not twice
    first = tensors(x)
    assert first is tensors(x) and isinstance(first, tf.Tensor)
    np.testing.assert_array_equal(first.numpy(), x)
    np.testing.assert_array_equal(tensors(y).numpy(), y)
    broken = np.array([object()], dtype=object)  # TensorFlow cannot copy this: the thread's error, not a hang
    tensors.start(broken)
    with pytest.raises((ValueError, TypeError)):
        tensors(broken)
