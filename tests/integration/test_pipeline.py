"""The input pipeline's guarantees, observed under real TensorFlow (docs/architecture.md, its input pitfalls).

* every epoch is a fresh permutation, the same on every worker, cut to whole global batches;
* a global batch holds the same examples whatever the number of workers and devices;
* a resume at (epoch, step) continues with exactly the batches still to come;
* ``fit()`` over several epochs consumes one stream once: no per-epoch iterator rebuild, nothing produced
  beyond the last step (so no ``.repeat()`` prefetch is left running when ``fit()`` returns).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.pipeline_probe"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def flatten(epochs: list[list[list[int]]]) -> list[list[int]]:
    return [batch for epoch in epochs for batch in epoch]


def test_each_epoch_is_a_new_permutation_of_whole_batches(probe: dict[str, Any]) -> None:
    epochs = probe["expected"]
    for epoch in epochs:
        seen = [index for batch in epoch for index in batch]
        assert len(epoch) == probe["steps"] and len(seen) == len(set(seen)) == 64
        assert set(seen) <= set(range(70))
    assert epochs[0] != epochs[1] != epochs[2]


def test_two_replicas_train_on_the_global_batches_in_order(probe: dict[str, Any]) -> None:
    assert probe["mirrored"] == flatten(probe["expected"])


def test_two_workers_slices_make_up_each_global_batch(probe: dict[str, Any]) -> None:
    first, second = probe["two_workers"]
    assert [a + b for a, b in zip(first, second, strict=True)] == flatten(probe["expected"])


def test_workers_with_several_devices_split_their_slice_per_replica(probe: dict[str, Any]) -> None:
    first, second = probe["two_workers_two_gpus_each"]  # per-replica batches of 2, two replicas per worker
    rebuilt = [first[2 * s] + first[2 * s + 1] + second[2 * s] + second[2 * s + 1] for s in range(probe["steps"])]
    assert rebuilt == probe["expected"][0]


def test_resume_mid_epoch_continues_with_the_batches_still_to_come(probe: dict[str, Any]) -> None:
    uninterrupted = flatten(probe["expected"])
    resume_at = 1 * probe["steps"] + 3
    assert probe["mirrored_resumed_at_epoch1_step3"] == uninterrupted[resume_at:]


def test_fit_consumes_one_stream_once_across_epochs(probe: dict[str, Any]) -> None:
    produced = probe["fit_produced"]
    expected = [index for batch in flatten(probe["expected"]) for index in batch]
    assert sorted(produced) == sorted(expected)  # each epoch's examples exactly once: not rebuilt, not repeated
    assert len(produced) == 3 * probe["steps"] * 8


def test_stream_validation_reports_what_keras_evaluate_reports(probe: dict[str, Any]) -> None:
    history, evaluated = probe["validation"]["history"], probe["validation"]["evaluate"]
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["val_loss"]) == 3
    assert history["val_loss"][-1] == pytest.approx(evaluated["loss"], rel=1e-5)
    assert history["val_accuracy"][-1] == pytest.approx(evaluated["accuracy"], rel=1e-5)
    assert history["val_loss"][0] != history["val_loss"][-1]  # measured anew each epoch
