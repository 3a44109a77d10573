"""The setup hook that makes a Ray worker process warm: TensorFlow and the worker's modules imported in advance.

Every process of a job runs this hook (the job's runtime env names it: ``launcher.job_runtime_env``), but only
the processes started for training workers do anything: Ray Train starts its workers with the extra environment
variable ``ORCHESTRATOR_TRAIN_WORKER`` (``RunConfig.worker_runtime_env``), so Ray Train's controller and its
synchronisation actor stay light. A process the pool prestarts (``warm_pool.refill``) is started with exactly the
training workers' runtime env, so it runs the same hook; when Ray Train restarts the worker group, the raylet
places the new worker actors in those idle processes, and the training function finds everything imported.

The import runs at a low CPU priority (``nice``): a refill happens while the job trains, and on a node whose CPUs
the training uses, the import must not slow the steps. Once the workers are gone (a failure) nothing competes
with it, so a process still importing then finishes at full speed. The priority is restored afterwards where
the process may raise it again (root, or CAP_SYS_NICE); ``preload_state`` says whether it was.

Import-light on purpose: this module is imported in every worker process of the job.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass

TRAIN_WORKER_FLAG = "ORCHESTRATOR_TRAIN_WORKER"
HOOK = "orchestrator.worker.preload.preload"
# What a training worker imports before it can train: TensorFlow (seconds), tf_keras, Ray Train's TensorFlow
# backend, the orchestrator's worker modules (which import the rest), and the part of Ray Tune that Ray Train's
# ``get_context()`` imports lazily on its first call (0.03 s in an idle process, 0.4-0.8 s in a worker whose
# CPUs a restarting group shares: it was the largest step between a training function's start and its strategy).
MODULES = (
    "tensorflow",
    "tf_keras",
    "ray.train.tensorflow",
    "ray.tune.trainable.trainable_fn_utils",
    "orchestrator.worker.session",
)
NICENESS = 10

log = logging.getLogger("orchestrator.worker.preload")


@dataclass(frozen=True)
class PreloadState:
    """What the hook did in this process."""

    started_at: float  # UNIX time the hook started
    finished_at: float | None  # when every module was imported (None: the import failed)
    error: str | None = None
    priority_restored: bool = True

    @property
    def seconds(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


_state: PreloadState | None = None


def preload_state() -> PreloadState | None:
    """What the hook did in this process, or None where it did nothing (not a training worker's process)."""
    return _state


def preload() -> None:
    """Ray's ``worker_process_setup_hook``: in a training worker's process, import what training needs.

    Never raises: a failing import here would stop Ray from starting the process at all; the training function
    imports the same modules and reports the error where the user sees it.
    """
    global _state
    if os.environ.get(TRAIN_WORKER_FLAG) != "1":
        return
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is imported (Keras 2 under MWMS)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.time()
    before = _priority()
    lowered = _set_priority(before + NICENESS) if before is not None else False
    error: str | None = None
    try:
        for module in MODULES:
            __import__(module)
    except Exception as exc:  # reported again, where it matters, by the training function's own import
        error = f"{type(exc).__name__}: {exc}"
        log.warning("preloading %s failed: %s", ", ".join(MODULES), error)
    finished = time.time() if error is None else None
    restored = True
    if lowered and before is not None:
        restored = _set_priority(before)
    _state = PreloadState(started_at=started, finished_at=finished, error=error, priority_restored=restored)
    if finished is not None:
        _announce(finished - started)


READY_KEY = "preloaded/{pid}"
KV_NAMESPACE = "orchestrator"


def _announce(seconds: float) -> None:
    """Leave in Ray's key-value store that this process is ready (the pool's log and the tests read it)."""
    try:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(READY_KEY.format(pid=os.getpid()), f"{seconds:.3f}".encode(), namespace=KV_NAMESPACE)
    except Exception as exc:  # only a report: the process is warm all the same
        log.warning("could not record that process %d is preloaded: %s", os.getpid(), exc)


def preloaded_seconds(pid: int) -> float | None:
    """How long process ``pid``'s preload took, once it has finished (None: not finished, or not preloaded)."""
    from ray.experimental.internal_kv import _internal_kv_get

    value = _internal_kv_get(READY_KEY.format(pid=pid), namespace=KV_NAMESPACE)
    return float(value) if value else None


def forget(pid: int) -> None:
    """Drop process ``pid``'s ready mark (it has been handed a worker)."""
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(READY_KEY.format(pid=pid), namespace=KV_NAMESPACE)


def process_started_at() -> float | None:
    """UNIX time this process started (Linux's /proc), or None where that is not known."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
            age = float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - max(0.0, age)


def _priority() -> int | None:
    if sys.platform != "linux":
        return None
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        return None


def _set_priority(value: int) -> bool:
    """Set the calling thread's niceness (Linux: per thread; threads made later inherit it)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(-20, min(19, value)))
    except OSError:
        return False
    return True
