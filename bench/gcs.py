"""A real GCS JSON API on 127.0.0.1 (``gcp-storage-emulator``) for the checkpoint-overhead figure on ``gs://``.

The same settings as ``tests/gcs.py``: ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` before gcsfs is
first imported (docs/architecture.md, "gcsfs against an emulator"), ``STORAGE_EMULATOR_HOST``, anonymous
credentials. Start it **before** Ray: the Ray workers inherit this process's environment when Ray starts, and
that is how they find the emulator.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

PROJECT = "orchestrator-bench"
START_TIMEOUT_S = 30.0


# The emulator serves one connection at a time (http.server.HTTPServer), and a client that has opened a connection
# but not yet sent its request holds it: a Ray worker's gcsfs thread, paused while TensorFlow's multi-worker set-up
# holds the GIL waiting for the other worker, which waits on the store, deadlocked a whole job (seen in the GCS job
# test). GCS itself serves connections concurrently; so does the emulator run this way.
THREADED = (
    "import http.server, runpy, sys; http.server.HTTPServer = http.server.ThreadingHTTPServer; "
    "sys.argv[0] = 'gcp_storage_emulator'; runpy.run_module('gcp_storage_emulator', run_name='__main__')"
)


def emulator_command(port: int) -> list[str]:
    """The command that starts the emulator on 127.0.0.1:``port`` (in memory, quiet), serving connections
    concurrently."""
    options = ["--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet"]
    return [sys.executable, "-c", THREADED, "start", *options]


@dataclass
class Emulator:
    process: subprocess.Popen[bytes]
    endpoint: str
    bucket: str

    def store_url(self, prefix: str) -> str:
        return f"gs://{self.bucket}/{prefix}"

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_emulator(folder: Path) -> Emulator:
    """Start the emulator on a free port with one bucket, and point this process's environment at it; its log and
    an empty gcloud configuration (no developer credentials picked up) go in ``folder``.

    Raises:
        RuntimeError: it is not installed, or did not answer within 30 s (its log says why).
    """
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    (folder / "gcloud").mkdir(parents=True, exist_ok=True)
    os.environ["CLOUDSDK_CONFIG"] = str(folder / "gcloud")
    log_path = folder / "gcs-emulator.log"
    os.environ["NO_GCE_CHECK"] = "true"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            emulator_command(port),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(endpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the GCS emulator did not start (pip install gcp-storage-emulator); see {log_path}")
        time.sleep(0.05)
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project={PROJECT}",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    return Emulator(process, endpoint, bucket)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers(endpoint: str) -> bool:
    """Whether the emulator at ``endpoint`` answers its JSON API."""
    try:
        with urllib.request.urlopen(f"{endpoint}/storage/v1/b?project={PROJECT}", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
