"""What compile() creates is initialised on each worker without rank 0's broadcast, and stays the same everywhere.

Two real TensorFlow processes under MultiWorkerMirroredStrategy (TF_CONFIG on local ports): the model's weights
are broadcast as TensorFlow does (random initial values), the compiled optimizer's and metrics' variables are
not (constants), and every variable ends equal on both workers.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from orchestrator.worker.devices import initial_broadcast_problem
from tests.tf_workers import run_workers

WORKER = textwrap.dedent(
    """
    import hashlib, json, logging, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf, tf_keras as keras
    from tensorflow.python.ops import collective_ops
    from orchestrator.worker.devices import local_initial_values

    broadcasts = [0]
    for name in ("broadcast_send", "broadcast_recv"):
        original = getattr(collective_ops, name)
        def counted(*args, _original=original, **kwargs):
            broadcasts[0] += 1
            return _original(*args, **kwargs)
        setattr(collective_ops, name, counted)

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = keras.Sequential([keras.layers.Dense(8, input_shape=(4,)), keras.layers.Dense(3)])
        built = broadcasts[0]
        with local_initial_values(strategy, logging.getLogger("w")):
            optimizer = keras.optimizers.Adam(1e-3)
            model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            optimizer.build(model.trainable_variables)
        compiled = broadcasts[0] - built
    values = [v.numpy().tobytes() for v in model.variables + optimizer.variables()]
    print(json.dumps({"built": built, "compiled": compiled, "count": len(values),
                      "sha": hashlib.sha256(b"".join(values)).hexdigest()}))
    """
)


def test_the_tensorflow_internal_replaced_is_still_there() -> None:
    assert initial_broadcast_problem() is None


def test_compiled_variables_skip_the_broadcast_and_match_on_every_worker(tmp_path: Path) -> None:
    results = run_workers(WORKER, tmp_path, timeout_s=180)
    # the model's 4 weights (random initial values) and its 3 step counters: broadcast, as TensorFlow does
    assert [r["built"] for r in results] == [7, 7], results
    assert all(r["compiled"] == 0 for r in results)  # slots, iterations, LR, metrics: none broadcast
    assert results[0]["count"] == results[1]["count"] > 4
    assert results[0]["sha"] == results[1]["sha"]  # every variable the same on both workers
