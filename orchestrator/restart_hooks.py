"""Runs in Ray Train's controller: two waits taken off the start of every restarted worker group.

Measured on this machine with Ray 2.60 (idle, warm worker processes), a restart spent about 2 s in Ray Train
between the failure and the training function's start, and two of its waits are Ray's, not the work's:

1. **The placement group.** Ray Train removes the failed group's placement group and creates the new one at once.
   The GCS tries to place the new one before the raylet's report that the old bundles are free has reached it
   (about 15 ms later), fails, and tries again only at its next periodic pass over pending groups, once a
   second: 0.35-0.62 s of every restart waited for that pass (GCS debug log: "Failed to create placement group,
   try again", then the next "Scheduling placement group"). ``before_worker_group_start`` waits, at most
   ``RELEASE_WAIT_S``, until the GCS shows the resources the group needs as available, so its first try
   succeeds.
2. **The synchronisation actor.** Every worker group gets a new Ray Train ``SynchronizationActor`` (the relay of
   every collective: the workers' first agreement waits for it). It inherits the controller's runtime env, so
   no warm training-worker process fits it, and its process started cold: with the workers in warm processes
   it was the slowest part of the start, up to 0.7 s of waiting at the first agreement. Once each group has
   started, a background thread here keeps one idle process with the controller's runtime env on this node
   (``raylet.prestart``), where the next group's synchronisation actor lands. Its start still imports Ray Train
   (about 1 s, 2-3 s under a restarting group's load), so the workers' agreements no longer go through it once
   their strategy is made (``worker.agreement``); the kept process still serves the agreements before that and
   where TensorFlow's coordination service cannot carry them.

Both are optimisations: any failure leaves Ray Train to do as it does without them, with one log line.
``ray_train_internals_problem`` checks what they rely on (a unit test calls it, so a Ray upgrade that moves it
fails there). Import-light: the controller must not import TensorFlow.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import ray

from orchestrator import raylet

try:  # Ray Train's internal callback type: RunConfig.callbacks passes other callbacks through to the controller
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback
except ImportError:  # pragma: no cover - a Ray that moved it: the hooks are off (ray_train_internals_problem)
    WorkerGroupCallback = object  # type: ignore[assignment,misc]

log = logging.getLogger("orchestrator.restart_hooks")

RELEASE_WAIT_S = 1.0  # how long a new group's start may wait for the failed group's resources to show as free
POLL_S = 0.01
SYNC_ACTOR_READY_S = 60.0  # how long the keeper waits for this group's synchronisation actor before checking
# A new process takes a second or two of CPU to start: not while the new group sets up (on a busy node that
# slowed its start by about as much as the process saves), but once it trains.
KEEP_AFTER_S = 10.0


def ray_train_internals_problem() -> str | None:
    """What, of Ray Train's internals these hooks use, is missing in this Ray; None if all is there."""
    try:
        from ray.train.v2._internal.execution.callback import WorkerGroupCallback as Callback
        from ray.train.v2._internal.execution.worker_group import WorkerGroupContext
        from ray.train.v2._internal.execution.worker_group.state import WorkerGroupState
    except ImportError as exc:
        return f"a Ray Train module moved: {exc}"
    for hook in ("before_worker_group_start", "after_worker_group_training_start", "after_worker_group_shutdown"):
        if not callable(getattr(Callback, hook, None)):
            return f"Ray Train's WorkerGroupCallback has no {hook}"
    fields = getattr(WorkerGroupContext, "__dataclass_fields__", {})
    if not {"num_workers", "resources_per_worker"} <= set(fields):
        return "Ray Train's WorkerGroupContext has no num_workers/resources_per_worker"
    if "sync_actor" not in getattr(WorkerGroupState, "__dataclass_fields__", {}):
        return "Ray Train's WorkerGroupState has no sync_actor"
    return raylet.ray_internals_problem()


def shortfall(available: dict[str, float], needed: dict[str, float]) -> dict[str, float]:
    """What of ``needed`` ``available`` lacks (empty: it is all there)."""
    return {k: v - available.get(k, 0.0) for k, v in needed.items() if v > available.get(k, 0.0) + 1e-9}


class FastRestart(WorkerGroupCallback):
    """Ray Train controller hooks: the new placement group placed at its first try, a process kept for the next
    group's synchronisation actor. Pickled into the controller through ``RunConfig.callbacks``."""

    def __init__(self) -> None:
        self._problem: str | None = None
        self._shut_down_at: float | None = None
        self._checked = False

    def _off(self) -> bool:
        if not self._checked:
            self._checked = True
            self._problem = ray_train_internals_problem()
            if self._problem is not None:
                log.warning("restart hooks off: %s; restarts wait for Ray as usual", self._problem)
        return self._problem is not None

    def after_worker_group_shutdown(self, worker_group_context: Any) -> None:
        self._shut_down_at = time.monotonic()

    def before_worker_group_start(self, worker_group_context: Any) -> None:
        """After a failed group's shutdown, wait until its resources show as free (at most RELEASE_WAIT_S)."""
        if self._shut_down_at is None or self._off():
            return  # the first group: nothing of ours is being released
        per_worker = dict(worker_group_context.resources_per_worker)
        needed = {k: v * worker_group_context.num_workers for k, v in per_worker.items() if v}
        started = time.monotonic()
        try:
            if shortfall(ray.cluster_resources(), needed):
                return  # a node is gone: releasing cannot make the group fit; Ray Train waits as it does
            while shortfall(ray.available_resources(), needed):
                if time.monotonic() - started > RELEASE_WAIT_S:
                    log.info("the failed group's resources still show as taken after %.1f s", RELEASE_WAIT_S)
                    return
                time.sleep(POLL_S)
        except Exception as exc:  # an optimisation: Ray Train goes on without it
            log.warning("restart hooks: could not read the cluster's resources (%s: %s)", type(exc).__name__, exc)
            return
        waited = time.monotonic() - self._shut_down_at
        log.debug("the failed group's resources showed as free %.3f s after its shutdown", waited)

    def after_worker_group_training_start(self, worker_group: Any) -> None:
        if self._off():
            return
        state = getattr(worker_group, "_worker_group_state", None)
        sync_actor = getattr(state, "sync_actor", None)
        threading.Thread(target=self._keep_process, args=(sync_actor,), name="sync-actor-process", daemon=True).start()

    def _keep_process(self, sync_actor: Any) -> None:
        """Once this group's synchronisation actor holds its process, keep one idle process for the next one."""
        try:
            if sync_actor is not None:
                ray.get(sync_actor.__ray_ready__.remote(), timeout=SYNC_ACTOR_READY_S)
            time.sleep(KEEP_AFTER_S)
            context = ray.get_runtime_context()
            job_id = context.get_job_id()
            stub = raylet.raylet(context.get_node_id())
            runtime_env = context.get_runtime_env_string()
            variables = json.loads(runtime_env or "{}").get("env_vars") or {}
            if any(raylet.has_environment(pid, variables) for pid in raylet.idle_processes(stub, job_id)):
                return  # one is idle already (the previous group's synchronisation actor did not take it)
            raylet.prestart(stub, job_id, runtime_env, 1)
            log.info("prestarted a process for the next worker group's synchronisation actor")
        except Exception as exc:  # an optimisation: the next synchronisation actor starts cold
            log.warning("could not keep a process for the next synchronisation actor: %s: %s", type(exc).__name__, exc)
