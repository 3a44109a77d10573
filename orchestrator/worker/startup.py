"""A worker's start-up: how long each phase took, and meeting rank 0's TensorFlow server without a retry."""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from orchestrator.worker.preload import preload_state, process_started_at

CHIEF_WAIT_S = 10.0  # how long a worker waits for rank 0's TensorFlow server before starting its strategy


class StartupClock:
    """Seconds each start-up phase of this worker took, the first from the process's start (imports).

    A warm process (TensorFlow preloaded by the pool before it was handed this worker) has no such phase: its
    age is the time it waited in the pool.
    """

    def __init__(self) -> None:
        self._last = time.time()
        started, preload = process_started_at(), preload_state()
        warm = preload is not None and preload.finished_at is not None
        self.seconds = {} if started is None or warm else {"process": round(max(0.0, self._last - started), 3)}

    def mark(self, phase: str) -> None:
        now = time.time()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


def wait_for_chief(log: logging.Logger) -> None:
    """Until the chief's (rank 0's) TensorFlow server accepts connections, at most ``CHIEF_WAIT_S``.

    Under MultiWorkerMirroredStrategy every worker connects to the chief's coordination service as its strategy
    starts. A worker that tries before the chief's server listens is refused, and gRPC tries again only after its
    reconnect backoff (about a second): measured here, 0.7-1 s of most restarts, whichever rank came first.
    Waiting for the port costs a few milliseconds instead.
    """
    chief = chief_address()
    if chief is None:
        return
    host, _, port = chief.rpartition(":")
    started = time.monotonic()
    while time.monotonic() - started < CHIEF_WAIT_S:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.01)
    log.info(
        "rank 0's TensorFlow server at %s did not answer within %.0f s; starting the strategy anyway",
        chief,
        CHIEF_WAIT_S,
    )


def chief_address() -> str | None:
    """Rank 0's address in the cluster Ray Train's TensorFlow backend wrote to ``TF_CONFIG``, if it did."""
    try:
        workers = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker") or []
    except ValueError:
        return None
    return str(workers[0]) if workers and ":" in str(workers[0]) else None
