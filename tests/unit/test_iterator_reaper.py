"""The end of a fit() does not wait for tf.data's iterator teardown: the iterators are dropped on another thread."""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def test_fit_trains_from_a_watched_dataset_and_its_iterators_are_dropped_off_the_training_thread() -> None:
    import tensorflow as tf
    import tf_keras as keras

    from orchestrator.worker.pipeline import EpochPlan, IteratorReaper, distributed_dataset, make_encoder

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x = np.random.default_rng(0).random((256, 4, 4, 1)).astype(np.float32)
    y = (np.arange(256) % 3).astype(np.int64)
    encode = make_encoder(images_dtype=x.dtype, num_classes=3, loss="sparse_categorical_crossentropy", resize=None)
    with strategy.scope():
        model = keras.Sequential([keras.layers.Flatten(input_shape=(4, 4, 1)), keras.layers.Dense(3)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    reaper = IteratorReaper()
    dataset = reaper.watch(
        distributed_dataset(strategy, x, y, global_batch=32, seed=1, plan=EpochPlan(0, 2), shuffle=True, encode=encode)
    )
    assert isinstance(dataset, tf.distribute.DistributedDataset)  # tf_keras still takes it for what it is
    history = model.fit(dataset, epochs=2, steps_per_epoch=8, verbose=0)
    assert len(history.history["loss"]) == 2 and int(model.optimizer.iterations.numpy()) == 16

    [iterator] = reaper._held  # fit() made one iterator; the reaper still holds it, so it is not destroyed yet
    gone = threading.Event()
    weakref.finalize(iterator, lambda: gone.set() if threading.current_thread().name == "iterator-reaper" else None)
    del iterator
    reaper.reap()
    assert gone.wait(60), "the iterator was not dropped on the reaper's thread"
    assert reaper._held == []
