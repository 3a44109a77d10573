"""The spec's multi-replica and precision settings: what they accept, the one-line errors, what status shows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.render import throughput
from orchestrator.spec_loader import load_spec
from orchestrator.views import describe_spec
from tests.conftest import quickstart_raw, write_spec


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return caught.value.problems


def test_cpu_replicas_count_in_the_replicas_and_the_batch_rule(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["scaling"] = {"workers": 2, "cpu_replicas_per_worker": 2}
    spec = load_spec(write_spec(tmp_path, raw))
    assert spec.scaling.replicas == 4 and spec.scaling.devices_per_worker == 2
    assert "2 worker(s) x 2 CPU replicas (testing) = 4 replicas" in describe_spec(spec)
    raw["batch_size"] = 66  # splits over 2 workers, not over 4 replicas
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "must be divisible by the number of replicas (4 = 2 workers x 2 device(s) each)" in problem


def test_cpu_replicas_with_gpus_is_a_one_line_error(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["scaling"] = {"workers": 1, "gpus_per_worker": 2, "cpu_replicas_per_worker": 2}
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert "scaling.cpu_replicas_per_worker: got 2 with gpus_per_worker 2" in problem


def test_elastic_sizes_count_cpu_replicas(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw["batch_size"] = 24
    raw["scaling"] = {"workers": 3, "min_workers": 1, "cpu_replicas_per_worker": 4}
    spec = load_spec(write_spec(tmp_path, raw))
    assert spec.scaling.sizes(24) == [3, 2, 1]  # 12, 8 and 4 replicas split 24
    raw["batch_size"] = 36
    assert load_spec(write_spec(tmp_path, raw)).scaling.sizes(36) == [3, 1]  # 8 replicas do not split 36


def test_precision_and_xla_are_checked_and_shown(tmp_path: Path) -> None:
    raw = quickstart_raw()
    raw.update(precision="mixed_float16", jit_compile=True)
    spec = load_spec(write_spec(tmp_path, raw))
    assert describe_spec(spec).endswith(", mixed_float16, XLA")
    raw["precision"] = "float16"
    [problem] = problems_of(write_spec(tmp_path, raw))
    assert problem.startswith("line ") and "precision" in problem and "mixed_float16" in problem


def test_throughput_is_per_replica_where_the_replicas_are_known() -> None:
    assert throughput(400.0, 4) == "400.0 samples/s on 4 replica(s), 100.0 per replica"
    assert throughput(400.0, None) == "400.0 samples/s"


def test_a_user_model_with_a_float16_output_gets_a_float32_cast() -> None:
    import tf_keras as keras

    from orchestrator.worker.devices import float32_outputs

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
        assert model.outputs[0].dtype.name == "float16"
        wrapped = float32_outputs(model, logging.getLogger("test"))
        assert wrapped.outputs[0].dtype.name == "float32" and wrapped.layers[-1].name == "float32_output_0"
        kept = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", dtype="float32")(inputs))
        assert float32_outputs(kept, logging.getLogger("test")) is kept
    finally:
        keras.mixed_precision.set_global_policy("float32")
