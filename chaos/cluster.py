"""What the chaos run breaks: a GCS store on the emulator that can be stopped and restarted with its data, and a
two-node Ray cluster on this host whose second node can be drained, lost and replaced.

* ``Store``: ``gcp-storage-emulator`` serving one bucket from a data folder on disk (not in memory: its data
  must outlive a stop), always on the same port, so that a restart is the same store coming back. Its files are
  written atomically (write a temporary file, then rename): a stop in the middle of the emulator's own metadata
  write would otherwise leave it unreadable, a fault of the emulator, not of the store it stands for.
* ``RayCluster``: a head node and a "spot" node, 1 CPU each, started with ``ray start`` (token authentication,
  as a second node on one host needs: docs/architecture.md). A job of two 1-CPU workers has one worker on each.
  ``close`` ends every process of this cluster and no other (another Ray may run on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from bench.gcs import answers, free_port

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120.0
PROJECT = "orchestrator-chaos"

# The emulator served one connection at a time and wrote its files in place; run it threaded (as bench/gcs.py
# does) and with atomic writes.
EMULATOR = """
import http.server, os, runpy, sys, threading
import gcp_storage_emulator.storage as storage
http.server.HTTPServer = http.server.ThreadingHTTPServer
plain = storage._FileStore.write_bytes

def write_bytes(self, rel, content):
    if self._use_memory:
        return plain(self, rel, content)
    rel = self._norm(rel)
    parent = self._norm(os.path.dirname(rel)) if "/" in rel else ""
    if parent:
        self.makedirs(parent)
    path = self._disk_path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)

storage._FileStore.write_bytes = write_bytes
sys.argv[0] = "gcp_storage_emulator"
runpy.run_module("gcp_storage_emulator", run_name="__main__")
"""


class Store:
    """The GCS emulator on a fixed port with its data on disk; ``stop`` and ``start`` make it briefly
    unreachable without losing anything."""

    def __init__(self, folder: Path, bucket: str = "chaos") -> None:
        self.folder = folder
        self.data = folder / "gcs-data"
        self.data.mkdir(parents=True, exist_ok=True)
        (folder / "gcloud").mkdir(exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # see bench/gcs.py
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "CLOUDSDK_CONFIG": str(folder / "gcloud"),
            "NO_GCE_CHECK": "true",
        }

    def url(self, prefix: str) -> str:
        return f"gs://{self.bucket}/{prefix}"

    def start(self) -> None:
        command = [sys.executable, "-c", EMULATOR, "start", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--default-bucket", self.bucket, "--quiet"]
        with (self.folder / "gcs-emulator.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "STORAGE_BASE": str(self.data)}
            )
        deadline = time.monotonic() + 30
        while not answers(self.endpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the GCS emulator did not start on port {self.port}: see {self.folder}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGKILL: the store is gone at once, as a network partition would make it, mid-request or not."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def object_names(self, prefix: str) -> list[str]:
        """Every object under ``prefix``, from the server's JSON API (no client cache)."""
        query = urllib.parse.urlencode({"prefix": prefix})
        url = f"{self.endpoint}/storage/v1/b/{self.bucket}/o?{query}"
        names: list[str] = []
        token = ""
        while True:
            with urllib.request.urlopen(url + (f"&pageToken={token}" if token else ""), timeout=10) as response:
                listing = json.load(response)
            names += [item["name"] for item in listing.get("items", [])]
            token = listing.get("nextPageToken", "")
            if not token:
                return sorted(names)


class RayCluster:
    """A head node and a spot node (1 CPU each) on this host."""

    def __init__(self, log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, **env, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": "", "PYTHONPATH": path}
        self.spot_port: int | None = None
        self._ray("start", "--head", f"--port={self.port}", "--num-cpus=1", "--include-dashboard=false")

    def _ray(self, *args: str) -> str:
        done = subprocess.run(
            ["ray", *args], capture_output=True, text=True, env=self.env, timeout=START_TIMEOUT_S, check=False
        )
        with self.log.open("a") as sink:
            sink.write(f"$ ray {' '.join(args)}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed (exit {done.returncode}): see {self.log}")
        return done.stdout

    def add_spot(self) -> None:
        """Start the spot node (1 CPU); a ``ray start`` that timed out on a loaded machine is cleaned up and tried
        again, up to three times."""
        for attempt in range(3):
            port = free_port()
            try:
                self._ray("start", f"--address={self.address}", "--num-cpus=1", f"--node-manager-port={port}")
            except (RuntimeError, subprocess.TimeoutExpired):
                for pid in pids(f"raylet.*--node_manager_port={port}( |$)"):
                    kill_tree(pid)
                if attempt == 2:
                    raise
                continue
            self.spot_port = port
            return

    def spot_raylet(self) -> int:
        assert self.spot_port is not None, "no spot node"
        found = pids(f"raylet.*--node_manager_port={self.spot_port}( |$)")
        if len(found) != 1:
            raise RuntimeError(f"expected one raylet on port {self.spot_port}, found {found}")
        return found[0]

    def spot_node_id(self) -> str:
        """The spot raylet's Ray node id (from its command line)."""
        with open(f"/proc/{self.spot_raylet()}/cmdline", "rb") as handle:
            arguments = handle.read().decode().split("\0")
        return next(a.split("=", 1)[1] for a in arguments if a.startswith("--node_id="))

    def drain_spot(self, deadline_s: float) -> None:
        self._ray(
            "drain-node",
            f"--address={self.address}",
            f"--node-id={self.spot_node_id()}",
            "--reason=DRAIN_NODE_REASON_PREEMPTION",
            "--reason-message=spot reclaim (chaos)",
            f"--deadline-remaining-seconds={int(deadline_s)}",
        )

    def lose_spot(self) -> bool:
        """SIGKILL the spot raylet and every process it started, as when the VM is reclaimed; False when the
        raylet had already ended (a drained node's raylet exits by itself once it is idle)."""
        assert self.spot_port is not None, "no spot node"
        found = pids(f"raylet.*--node_manager_port={self.spot_port}( |$)")
        for raylet in found:
            kill_tree(raylet)
        self.spot_port = None
        return bool(found)

    def close(self) -> None:
        """End every process of this cluster (its raylets with what they started, then its GCS and the rest)."""
        for raylet in pids(rf"raylet .*--gcs-address=[0-9.]+:{self.port}( |$)"):
            kill_tree(raylet)
        for pid in pids(rf"[:=]{self.port}( |$)"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split() if int(p) != os.getpid()]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its children (a raylet's workers and agents would otherwise outlive it)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    for victim in [pid, *(int(c) for c in children.stdout.split())]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def leftover_processes(port: int) -> list[int]:
    """Processes of the cluster whose GCS listens on ``port`` still running (none after ``close``)."""
    return pids(rf"[:=]{port}( |$)")
