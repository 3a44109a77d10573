"""StreamValidation: validate at every epoch end from one distributed stream for the whole ``fit()``.

tf_keras's ``validation_data`` calls ``iter()`` on the validation dataset at every epoch, which under
MultiWorkerMirroredStrategy rebuilds the distributed iterator (docs/architecture.md, "A finite dataset per
epoch"): measured here, 16 validation steps cost 0.34 s an epoch through Keras against about 0.1 s of compute.
This callback iterates one stream holding the validation set once per epoch (same order every time), runs the
model's own ``test_step`` under the strategy, and adds ``val_*`` entries to the epoch's logs, as Keras would,
for the callbacks after it.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras


class StreamValidation(keras.callbacks.Callback):
    """Adds ``val_<metric>`` to each epoch's logs; place it first so later callbacks see them.

    Args:
        dataset: a distributed dataset with ``steps`` validation batches per epoch of the fit, in a row.
        steps: validation batches per epoch.

    Example::

        stream = distributed_dataset(strategy, x_val, y_val, ..., plan=EpochPlan(0, epochs), shuffle=False)
        model.fit(train, epochs=epochs, steps_per_epoch=n, callbacks=[StreamValidation(stream, steps)])
    """

    def __init__(self, dataset: Any, steps: int) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"Invalid value for `steps`. Received: steps={steps}. Expected a positive integer.")
        self._supports_tf_logs = True
        self._dataset = dataset
        self._steps = steps
        self._iterator: Any = None
        self._step: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._iterator = iter(self._dataset)
        model = self.model

        @tf.function
        def validation_step(iterator: Any) -> None:
            model.distribute_strategy.run(model.test_step, args=(next(iterator),))

        self._step = validation_step

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.model.reset_metrics()  # the epoch's training figures are already in `logs`
        for _ in range(self._steps):
            self._step(self._iterator)
        results = self.model.get_metrics_result()
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in results.items()})

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._iterator = None
