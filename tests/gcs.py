"""A real Google Cloud Storage JSON API on 127.0.0.1: the `gcp-storage-emulator` server, reached through gcsfs.

Fixtures for every test folder (tests/conftest.py loads this module as a plugin): the cloud tests use them, and
so does the ``gs`` case of the ``store_url`` fixture, which runs the store tests on the emulator too.

One emulator (in-memory storage) serves the whole session; every test gets its own ``gs://<bucket>/<prefix>`` root.
The store opens that plain URL with ``fsspec.core.url_to_fs``, exactly as in production: gcsfs finds the emulator
through ``STORAGE_EMULATOR_HOST``, which it reads on every request.

Ordering matters: ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` is read once, when gcsfs is first imported (fsspec imports it
lazily, on the first ``gs://`` URL). Left at its default ("true"), ``gcsfs.GCSFileSystem`` is the experimental
``ExtendedGcsFileSystem``, which probes every bucket's type over gRPC/TLS and, with anonymous credentials, stalls 60 s
per operation against the plain-HTTP emulator. Nothing in ``orchestrator`` imports gcsfs eagerly, so setting the
variable here, before the first ``gs://`` URL of the session, is enough; the fixture fails loudly otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.gcs import answers, emulator_command, free_port

EMULATOR_PACKAGE = "gcp_storage_emulator"
PROJECT = "orchestrator-test"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Emulator:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str

    def object_bytes(self, name: str) -> bytes:
        """An object's bytes straight from the server's JSON API (no gcsfs, no cache): what is really stored."""
        quoted = urllib.parse.quote(name, safe="")
        url = f"{self.endpoint}/storage/v1/b/{self.bucket}/o/{quoted}?alt=media"
        with urllib.request.urlopen(url, timeout=10) as response:
            data: bytes = response.read()
            return data

    def put_object(self, name: str, data: bytes) -> None:
        """Write an object straight through the server's JSON API, as another machine's client would."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        request = urllib.request.Request(
            f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o?{query}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},  # the emulator parses a JSON content type
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["name"] == name

    def object_names(self, prefix: str) -> list[str]:
        """Every object name under ``prefix``, from the server's JSON API."""
        query = urllib.parse.urlencode({"prefix": prefix})
        with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b/{self.bucket}/o?{query}", timeout=10) as response:
            listing = json.load(response)
        return sorted(item["name"] for item in listing.get("items", []))


def _start_emulator(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the emulator on a free port and wait until its JSON API answers; retry if the port was snatched."""
    failures: list[str] = []
    for _ in range(3):
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                emulator_command(port),  # serving connections concurrently, as GCS does (bench/gcs.py says why)
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if answers(endpoint):
                return process, endpoint
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        failures.append(f"port {port}: exit code {process.returncode}")
    pytest.fail(
        f"the GCS emulator did not answer within {START_TIMEOUT_S:.0f} s ({'; '.join(failures)}); "
        f"its output: {log_path}\n{log_path.read_text(errors='replace')[-2000:]}"
    )


def _create_bucket(endpoint: str, bucket: str) -> None:
    request = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project={PROJECT}",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["name"] == bucket


@pytest.fixture(scope="session")
def gcs_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pytest.MonkeyPatch]:
    """gcsfs configured for a local emulator: plain HTTP core client, anonymous, no Google metadata server probes."""
    if importlib.util.find_spec(EMULATOR_PACKAGE) is None:
        pytest.skip("the GCS emulator is not installed: pip install gcp-storage-emulator (in the 'test' extra)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        # Hermetic credentials: a developer's gcloud / ADC login must not be picked up (it would try to refresh a
        # token on the internet); gcsfs then falls back to anonymous access, which the emulator accepts.
        patch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        patch.setenv("CLOUDSDK_CONFIG", str(tmp_path_factory.mktemp("gcloud-config")))
        patch.setenv("NO_GCE_CHECK", "true")

        import fsspec
        import gcsfs.core

        gs_class = fsspec.get_filesystem_class("gs")
        if gs_class is not gcsfs.core.GCSFileSystem:
            pytest.fail(
                f"gs:// resolves to {gs_class.__module__}.{gs_class.__qualname__}: gcsfs was imported before "
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set; its bucket-type probe (gRPC/TLS) can stall ~60 s per "
                "call on the plain-HTTP emulator. "
                "Export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false before running pytest."
            )
        yield patch
        gcsfs.core.GCSFileSystem.clear_instance_cache()  # no later test reuses a client of this session


@pytest.fixture(scope="session")
def gcs_emulator(gcs_environment: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One running emulator for the session, with one bucket; STORAGE_EMULATOR_HOST points at it."""
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    process, endpoint = _start_emulator(log_path)
    try:
        bucket = f"orchestrator-{uuid.uuid4().hex[:12]}"
        _create_bucket(endpoint, bucket)
        gcs_environment.setenv("STORAGE_EMULATOR_HOST", endpoint)
        yield Emulator(endpoint=endpoint, bucket=bucket)
    finally:
        gcs_environment.delenv("STORAGE_EMULATOR_HOST", raising=False)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def gcs_prefix(gcs_emulator: Emulator) -> str:
    """A fresh, empty object prefix in the session's bucket."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def gcs_store_url(gcs_emulator: Emulator, gcs_prefix: str) -> str:
    """A fresh, empty store root: ``gs://<bucket>/<unique prefix>`` on the emulator."""
    return f"gs://{gcs_emulator.bucket}/{gcs_prefix}"
