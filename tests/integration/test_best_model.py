"""A job that keeps a best model is evaluated on the test split with that model, not the final one, and says so.

The best model here is by ``val_accuracy`` in ``min`` mode (the worst epoch), so that it is surely not the last
epoch's: the evaluation must be the one of ``best/model.keras``, which differs from the final model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.runner import run_job
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw, write_spec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


def evaluate(store: JobStore, job: str, *parts: str) -> dict[str, float]:
    """The stored model ``parts`` on the job's test split, evaluated here as a user would."""
    import tensorflow as tf
    import tf_keras as keras

    from orchestrator.recipes.datasets import synthetic
    from orchestrator.worker.pipeline import make_encoder

    spec = store.load_job(job).spec
    data = synthetic(spec.data, spec.seed)  # type: ignore[arg-type]
    assert data.x_test is not None and data.y_test is not None
    encode = make_encoder(images_dtype=data.x_test.dtype, num_classes=data.num_classes, loss=spec.loss, resize=None)
    steps = len(data.x_test) // spec.batch_size
    images, labels = encode(
        tf.constant(data.x_test[: steps * spec.batch_size]), tf.constant(data.y_test[: steps * spec.batch_size])
    )
    model: Any = keras.models.load_model(store.url_of(job, *parts))
    results: dict[str, float] = model.evaluate(images, labels, batch_size=spec.batch_size, verbose=0, return_dict=True)
    return results


def test_the_test_split_is_evaluated_on_the_best_model_where_the_job_keeps_one(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw.update(name="kept-best", epochs=3, deterministic=True)
    raw["data"].update(train_examples=1024, validation_examples=256, test_examples=256)
    raw["scaling"] = {"workers": 1, "cpus_per_worker": 1}
    raw["callbacks"] = {"best_model": {"monitor": "val_accuracy", "mode": "min"}}
    store = JobStore(str(tmp_path / "store"))
    result = run_job(write_spec(tmp_path, raw), store=store)
    assert result.status is JobStatus.SUCCEEDED

    history = store.read_history("kept-best")
    worst = int(np.argmin([r.metrics["val_accuracy"] for r in history]))
    assert worst + 1 < 3, "the test needs a best model that is not the final one"
    evaluation = store.read_evaluation("kept-best")
    assert evaluation is not None
    assert (evaluation.model, evaluation.model_epoch, evaluation.epochs_trained) == ("best", worst + 1, 3)
    best = evaluate(store, "kept-best", "best", "model.keras")
    final = evaluate(store, "kept-best", "model", "final.keras")
    assert evaluation.metrics["loss"] == pytest.approx(best["loss"], rel=1e-5)
    assert evaluation.metrics["accuracy"] == pytest.approx(best["accuracy"], abs=1e-6)
    assert abs(best["loss"] - final["loss"]) > 1e-3  # the final model is another one, and was not evaluated
    log = store.read_logs("kept-best")["worker-0.log"]
    assert f"test split (256 examples), best model (epoch {worst + 1}):" in log
