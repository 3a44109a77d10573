"""A whole job whose store is a real GCS API (the emulator, through gcsfs): backups, a killed worker, the restore.

The job runs in its own process (``python -m orchestrator run --store gs://...``) with its own embedded Ray, so its
workers inherit this session's emulator settings whatever Ray the other tests share. Every backup is uploaded to
the bucket through fsspec and the restore after the kill reads it back from there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from tests.conftest import quickstart_raw, write_spec
from tests.gcs import Emulator
from tests.history_checks import assert_each_epoch_trained_once

pytestmark = [pytest.mark.cloud, pytest.mark.integration]


def test_a_job_on_a_gs_store_survives_a_killed_worker(
    tmp_path: Path, gcs_store_url: str, gcs_emulator: Emulator, gcs_prefix: str
) -> None:
    raw = quickstart_raw()
    raw.update(name="on-gcs", epochs=4, deterministic=True)
    raw["data"].update(train_examples=2048, validation_examples=256)
    raw["backup"] = {"every_epochs": 1, "every_steps": 8, "keep": 2}
    raw["failures"] = {"max_failures": 2}
    spec = write_spec(tmp_path, raw, "on-gcs.yaml")
    output = tmp_path / "run.log"  # a file, not a pipe: Ray's output must never block the job
    with output.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", str(spec), "--store", gcs_store_url, "--json"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_ADDRESS": ""},
        )
    store = JobStore(gcs_store_url)
    deadline = time.monotonic() + 400
    try:
        while len(store.backup_names("on-gcs") if "on-gcs" in store.job_names() else []) < 2:
            assert process.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, "no two backups in the bucket"
            time.sleep(0.3)
        log = store.read_logs("on-gcs").get("worker-1.log", "")
        pid = re.search(r"rank 1/2 on \S+ \(pid (\d+)", log)
        assert pid, log
        os.kill(int(pid.group(1)), signal.SIGKILL)
        process.wait(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output.read_text()[-3000:]
    assert store.read_state("on-gcs").status is JobStatus.SUCCEEDED
    attempts = store.read_attempts("on-gcs")
    assert len(attempts) == 2 and attempts[1].restored_from is not None
    import tf_keras as keras

    local = tmp_path / "final.keras"  # Keras reads no gs:// URL of the emulator: through the store's filesystem
    store.fs.get(store.path("on-gcs", "model", "final.keras"), str(local))
    assert_each_epoch_trained_once(store, "on-gcs", 4, 2048 // 64, model=keras.models.load_model(local))
    # what is really in the bucket, read through the server's API: complete backups, manifests last
    names = gcs_emulator.object_names(f"{gcs_prefix}/jobs/on-gcs/checkpoints/")
    manifests = [n for n in names if n.endswith("/manifest.json")]
    assert 1 <= len(manifests) <= 2
    for manifest in manifests:
        folder = manifest.rsplit("/", 1)[0]
        assert f"{folder}/state.index" in names
    assert f"{gcs_prefix}/jobs/on-gcs/model/final.keras" in gcs_emulator.object_names(
        f"{gcs_prefix}/jobs/on-gcs/model/"
    )
