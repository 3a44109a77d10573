"""Run a job with ``orchestrator run`` in a child process and press Ctrl+C when the store shows a condition."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from orchestrator.store import JobStore
from tests.conftest import REPO

T = TypeVar("T")


def run_then_interrupt(
    spec: Path, store: JobStore, until: Callable[[JobStore], T | None], *, signals: int, within_s: float, waiting: str
) -> tuple[int, str, T]:
    """Start ``orchestrator run spec`` on ``store``; once ``until(store)`` returns a value, send ``signals``
    SIGINTs 0.05 s apart and wait for the run to end. Returns its exit code, its output and that value;
    fails with ``waiting`` when the value has not come within ``within_s``, or the run ended before it."""
    environment = {**os.environ, "ORCHESTRATOR_STORE": store.url}
    environment.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(spec)],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + within_s
        while (seen := until(store)) is None:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, waiting
            time.sleep(0.1)
        for _ in range(signals):
            process.send_signal(signal.SIGINT)
            time.sleep(0.05)
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, out + err, seen
