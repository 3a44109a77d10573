"""The warm pool: idle processes, TensorFlow already imported, waiting on each node for a restarted worker group.

A restart is otherwise mostly new processes importing TensorFlow (6-8 s of a 10 s restart here). Ray places a new
actor only in an idle process that has never run anything and whose runtime env matches the actor's exactly; it
prestarts such processes only at its own start, with an empty runtime env. So, once an attempt has trained its
first step, the first worker on each node asks its raylet to prestart processes with the training workers'
own runtime env (``NodeManagerService.PrestartWorkers``), enough that the node holds one idle warm process per
worker of the job it runs; each runs the setup hook (``preload``) and imports TensorFlow at a low priority. The
pool is checked again every ``REFRESH_S`` (a process Ray stopped is replaced). When Ray Train restarts the
group, its actors land in those processes.

Ray has no public API for this: the RPC and the node statistics come from Ray's internal modules (``raylet``).
``raylet.ray_internals_problem`` checks each of them (a unit test calls it, so a Ray upgrade that moves one fails
there); at run time any mismatch turns the pool off with one log line, and restarts start cold as before. Whether
the workers did land warm is measured, not assumed: every worker reports its process's start and preload
times (``gathered`` into ``attempts.jsonl``), and ``recovery.warm_starts`` counts a worker as warm only if its
process had finished the preload before the failure.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import ray
import ray.train
import tf_keras as keras

from orchestrator.raylet import idle_warm_processes, prestart, ray_internals_problem, raylet
from orchestrator.records import WorkerStart
from orchestrator.worker.preload import (
    forget,
    preload_state,
    preloaded_seconds,
    process_started_at,
)

REFRESH_S = 300.0  # how often the pool is checked and topped up while the attempt trains


def this_worker_start(rank: int) -> WorkerStart:
    """How this worker's process started: when, and when (if ever) the pool's preload finished in it."""
    state = preload_state()
    started = process_started_at()
    if state is not None and state.finished_at is not None:
        forget(os.getpid())  # no longer idle in the pool
    return WorkerStart(
        rank=rank,
        node=ray.get_runtime_context().get_node_id()[:12],
        pid=os.getpid(),
        process_started_at=_utc(started) if started is not None else None,
        preloaded_at=_utc(state.finished_at) if state is not None and state.finished_at is not None else None,
    )


class WarmPool:
    """Keeps this node's pool of warm processes topped up (one per worker of the job on the node).

    Runs in a background thread of the node's first worker, from the attempt's first step: the prestarted
    processes import TensorFlow while the job trains, never on its restart path.
    """

    def __init__(self, workers_on_node: int, log: logging.Logger, first: Callable[[], None] | None = None) -> None:
        self.workers_on_node = workers_on_node
        self._log = log
        self._first = first  # run once in the pool's thread before the first top-up (rank 0: the hit report)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_processes = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="warm-pool", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        if self._first is not None:
            try:
                self._first()
            except Exception as exc:  # a report, not training: log and go on
                self._log.warning("warm start report failed: %s: %s", type(exc).__name__, exc)
        problem = ray_internals_problem()
        if problem is not None:
            self._log.warning("warm pool off: %s; restarts start cold processes (about 5 s more each)", problem)
            return
        while True:
            try:
                self.top_up()
            except Exception as exc:  # the pool is an optimisation: training goes on without it
                self._log.warning("warm pool off: %s: %s; restarts start cold processes", type(exc).__name__, exc)
                return
            if self._stop.wait(REFRESH_S):
                return

    def top_up(self) -> int:
        """Prestart what this node's pool lacks; returns how many processes were asked for."""
        context = ray.get_runtime_context()
        job_id = context.get_job_id()
        runtime_env = context.get_runtime_env_string()
        stub = raylet(context.get_node_id())
        idle = idle_warm_processes(stub, job_id)
        wanted = self.workers_on_node - len(idle)
        if wanted <= 0:
            ready = {pid: preloaded_seconds(pid) for pid in idle}
            self._log.info(
                "warm pool: %d idle warm process(es) on this node (%s)",
                len(idle),
                ", ".join(
                    f"pid {pid} " + (f"ready, preloaded in {s:.1f} s" if s else "preloading")
                    for pid, s in ready.items()
                ),
            )
            return 0
        prestart(stub, job_id, runtime_env, wanted)
        self.started_processes += wanted
        self._log.info(
            "warm pool: asked the raylet for %d process(es) with TensorFlow preloaded (%d idle already), "
            "for the next restart of the %d worker(s) on this node",
            wanted,
            len(idle),
            self.workers_on_node,
        )
        return wanted


class RefillAfterFirstStep(keras.callbacks.Callback):
    """Starts the node's warm pool once the attempt has trained a step (the restart it serves is behind it)."""

    def __init__(self, pool: WarmPool) -> None:
        super().__init__()
        self.pool = pool

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.pool.start()


def describe_warm_start(workers: list[WorkerStart], failed_at: datetime | None) -> str:
    """One log line: how the attempt's workers started (warm or cold, and why cold)."""
    if not workers:
        return "workers' start not recorded"
    if failed_at is None:
        warm = [w for w in workers if w.preloaded_at is not None and w.process_started_at is not None]
        return f"{len(warm)}/{len(workers)} worker(s) in processes with TensorFlow preloaded (not a restart)"
    cold = [w for w in workers if w.preloaded_at is None or w.preloaded_at > failed_at]
    text = f"{len(workers) - len(cold)}/{len(workers)} restarted worker(s) landed in warm processes"
    if cold:
        reasons = []
        for worker in cold:
            if worker.preloaded_at is None:
                reasons.append(f"rank {worker.rank}: a new process (no warm process was idle on node {worker.node})")
            else:
                late = (worker.preloaded_at - failed_at).total_seconds()
                reasons.append(f"rank {worker.rank}: its process finished preloading {late:.1f} s after the failure")
        text += "; cold: " + "; ".join(reasons)
    return text


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)
