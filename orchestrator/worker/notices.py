"""SIGTERM to a worker process: a notice that it will be stopped soon, used for a just-in-time backup.

Ray's worker exits on SIGTERM at once (its own handler raises SystemExit on the main thread), losing every step
since the last backup. ``install`` (run on each worker's main thread by the orchestrator's Ray Train backend,
before training starts) replaces that handler: the first SIGTERM is recorded in the store as a notice, which
rank 0 sees within a second and turns into a backup that every worker takes at the same step; the attempt then
ends and Ray Train restarts the group from that backup. A second SIGTERM falls through to Ray's handler.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

from orchestrator.records import Notice
from orchestrator.store import JobStore

_received = threading.Event()
_target: dict[str, Any] = {}


def install(store_url: str, job: str) -> bool:
    """Replace the SIGTERM handler of this process (must run on its main thread); False where it cannot."""
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    _target.update(store_url=store_url, job=job, rank=None)
    _received.clear()

    def on_sigterm(signum: int, frame: Any) -> None:
        if _received.is_set():  # asked twice: leave now, the way Ray would have
            if callable(previous):
                previous(signum, frame)
            raise SystemExit(1)
        _received.set()
        try:
            rank = _target.get("rank")
            notice = Notice(rank=-1 if rank is None else rank, pid=os.getpid(), hostname=socket.gethostname(),
                            signal="SIGTERM")  # fmt: skip
            JobStore(_target["store_url"]).write_notice(_target["job"], notice)
        except Exception:  # a notice that cannot be stored leaves the SIGKILL path, as before
            pass

    signal.signal(signal.SIGTERM, on_sigterm)
    return True


def set_rank(rank: int) -> None:
    """The training thread tells the handler which rank this process is (for the notice)."""
    _target["rank"] = rank


def received() -> bool:
    return _received.is_set()
