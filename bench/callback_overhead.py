"""Per-step cost of the callbacks the orchestrator attaches, isolated from distribution noise.

    python -m bench.callback_overhead [--steps 3000] [--rounds 5]

One process, a tiny model (so a step takes about a millisecond and any per-step Python shows), the same
input stream; ``fit()`` alternated round by round with and without each callback. Reported: the median
difference in microseconds per step, with min-max over rounds. An earlier measurement (docs/architecture.md,
"Per-step hooks") found about 1000 us per step for tf_keras' BackupAndRestore hook; the orchestrator's progress
callback must stay far below that.
(BackupAndRestore itself is not alternated here: after a fit() with it, tf_keras 2.21 fails the next fit() of
the same model with "'Sequential' object has no attribute '_training_state'".)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from orchestrator.store import JobStore
    from orchestrator.worker.progress import ProgressCallback
    from orchestrator.worker.store_writer import StoreWriter

    strategy = tf.distribute.MirroredStrategy()
    x = np.random.default_rng(0).normal(size=(args.steps * 8, 8)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int32)
    with strategy.scope():
        model = keras.Sequential([keras.Input(shape=(8,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    def stream() -> Any:
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).prefetch(tf.data.AUTOTUNE)
        return strategy.experimental_distribute_dataset(dataset)

    class BatchHookNoop(keras.callbacks.Callback):  # type: ignore[misc]
        """The cheapest possible per-batch hook: what Keras' own machinery costs."""

        def __init__(self) -> None:
            super().__init__()
            self._supports_tf_logs = True

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            pass

    with tempfile.TemporaryDirectory() as scratch:
        store = JobStore(scratch)
        variants = ("none", "empty batch hook", "progress callback")
        seconds: dict[str, list[float]] = {v: [] for v in variants}
        model.fit(stream(), steps_per_epoch=args.steps, epochs=1, verbose=0)  # trace once, outside the clock
        for _ in range(args.rounds):
            for variant in variants:
                writer = StoreWriter(store, "bench", log_name="bench.log")
                callbacks: list[Any] = {
                    "none": [],
                    "empty batch hook": [BatchHookNoop()],
                    "progress callback": [
                        ProgressCallback(writer, attempt=1, epochs=1, steps_per_epoch=args.steps, global_batch=8)
                    ],
                }[variant]
                started = time.perf_counter()
                model.fit(stream(), steps_per_epoch=args.steps, epochs=1, callbacks=callbacks, verbose=0)
                seconds[variant].append(time.perf_counter() - started)
                writer.close()
    base = seconds["none"]
    print(f"\ncallback overhead, {args.steps} steps per fit, {args.rounds} rounds, one process (median [min-max])")
    print(f"{'callback':<22}{'us per step':>14}{'overhead us/step':>30}")
    for variant in variants:
        per_step = [1e6 * s / args.steps for s in seconds[variant]]
        extra = [1e6 * (s - b) / args.steps for s, b in zip(seconds[variant], base, strict=True)]
        print(
            f"{variant:<22}{statistics.median(per_step):>14.1f}"
            f"{statistics.median(extra):>14.1f} [{min(extra):.1f} to {max(extra):.1f}]"
        )


if __name__ == "__main__":
    main()
