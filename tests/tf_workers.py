"""Two real TensorFlow processes under MultiWorkerMirroredStrategy on this host (TF_CONFIG on free local ports):
each runs a script and prints one JSON line last, which ``run_workers`` returns by rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(script: str, folder: Path, workers: int = 2, timeout_s: float = 240) -> list[dict[str, Any]]:
    """Run ``script`` as ``workers`` processes of one cluster; each one's last stdout line, parsed as JSON."""
    cluster = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    path = folder / "worker.py"
    path.write_text(script)
    procs = []
    for rank in range(workers):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": rank}}),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        }
        procs.append(
            subprocess.Popen([sys.executable, str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout_s)
        assert proc.returncode == 0, err.decode()[-3000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results
