"""Runs in Ray Train's controller: an elastic job's worker-group size (``scaling.min_workers``).

Ray Train V2 restarts a failed group at the size its scaling policy decides. Its own elastic policy counts the
resources Ray Data's autoscaling coordinator has reserved, which still held a dead node's long after the node
was gone (measured here: a one-worker group started 82 s after the loss). ``ElasticScaling`` decides from what
the cluster has now instead (``orchestrator.resize_policy``, pure):

* a group to start (the first, or after a failure) gets the largest allowed size the live nodes hold, where a
  node counts only if its raylet accepts a connection (Ray's GCS calls a node dead only after its health
  checks have failed for a while; a reclaimed node's raylet refuses or times out at once); fewer than
  ``min_workers``: wait, saying why every 30 s;
* a running group smaller than ``workers`` grows once room for a larger allowed size has been there for a few
  seconds: through the handshake in ``orchestrator.resize_signal`` (rank 0 backs up at a step the workers agree
  on and pauses; then the group is restarted at the new size and restores that backup), so no step is lost.
  From the first sight of the room it starts warm processes (TensorFlow preloaded, the warm pool's) on each
  node the group has no worker on; once the room has lasted, it asks when they are ready, or at most
  ``resize_policy.WARM_WAIT_S`` after they were started, while the small group trains on: the new workers
  then start warm instead of importing TensorFlow during the restart.

Every size change is recorded in ``resizes.jsonl`` and the job's ``controller.log`` with its reason.

It is Ray Train's internal ``ScalingPolicy`` type, put in place of the one ``TensorflowTrainer.fit`` creates
(``install``); ``ray_train_scaling_problem`` checks what that relies on (a unit test calls it, so a Ray upgrade
that moves it fails there), and at run time a mismatch leaves the job at a fixed size, with one log line.
Import-light: the controller must not import TensorFlow.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from orchestrator import resize_policy, resize_signal
from orchestrator.records import ResizeRecord, utc_now
from orchestrator.resize_policy import Growth, NodeView

try:
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy, NoopDecision, ResizeDecision
except ImportError:  # pragma: no cover - a Ray that moved them: not elastic (ray_train_scaling_problem says why)
    FixedScalingPolicy = object  # type: ignore[assignment,misc]

log = logging.getLogger("orchestrator.elastic")

CHECK_S = 1.0  # how often a running group's room to grow is looked at
PROBE_TIMEOUT_S = 0.5  # a raylet that does not accept a connection in this time is taken for gone
GROW_WAIT_S = 120.0  # how long the controller waits for the paused group's backup before it gives up growing
WAITING_LOG_S = 30.0


def ray_train_scaling_problem() -> str | None:
    """What, of Ray Train's internals the elastic policy uses, is missing in this Ray; None if all is there."""
    try:
        from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy as Fixed
        from ray.train.v2._internal.execution.scaling_policy import ResizeDecision as Resize
        from ray.train.v2.api import data_parallel_trainer
    except ImportError as exc:
        return f"a Ray Train module moved: {exc}"
    for method in ("make_decision_for_non_running_worker_group", "make_decision_for_running_worker_group"):
        if not callable(getattr(Fixed, method, None)):
            return f"Ray Train's ScalingPolicy has no {method}"
    if not {"num_workers", "resources_per_worker"} <= set(getattr(Resize, "__dataclass_fields__", {})):
        return "Ray Train's ResizeDecision has no num_workers/resources_per_worker"
    from ray.train.v2._internal.execution.worker_group.state import WorkerGroupState
    from ray.train.v2._internal.execution.worker_group.worker import ActorMetadata, Worker

    if "workers" not in getattr(WorkerGroupState, "__dataclass_fields__", {}):
        return "Ray Train's WorkerGroupState has no workers"
    if "metadata" not in getattr(Worker, "__dataclass_fields__", {}):
        return "Ray Train's Worker has no metadata"
    if "node_id" not in getattr(ActorMetadata, "__dataclass_fields__", {}):
        return "Ray Train's ActorMetadata has no node_id"
    if not callable(getattr(data_parallel_trainer, "create_scaling_policy", None)):
        return "TensorflowTrainer.fit no longer creates its policy with data_parallel_trainer.create_scaling_policy"
    from orchestrator import raylet

    return raylet.ray_internals_problem()  # the handshake uses Ray's internal KV


def live_nodes() -> list[NodeView]:
    """Ray's live nodes, each with whether its raylet accepts a connection now (probed at once, in parallel)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]

    def view(node: dict[str, Any]) -> NodeView:
        address = (str(node.get("NodeManagerAddress")), int(node.get("NodeManagerPort") or 0))
        try:
            with socket.create_connection(address, timeout=PROBE_TIMEOUT_S):
                reachable = True
        except OSError:
            reachable = False
        return NodeView(str(node["NodeID"]), dict(node.get("Resources") or {}), reachable)

    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
        return list(pool.map(view, nodes))


class ElasticScaling(FixedScalingPolicy):
    """Ray Train's scaling policy for a job with ``scaling.min_workers``: pickled into the controller."""

    def __init__(
        self,
        scaling_config: Any,
        *,
        sizes: Sequence[int],
        run: str,
        store_url: str,
        job: str,
        nodes: Callable[[], list[NodeView]] = live_nodes,
    ) -> None:
        super().__init__(scaling_config)
        self.sizes = list(sizes)
        self.run = run
        self.store_url = store_url
        self.job = job
        self._nodes = nodes
        self._size: int | None = None  # the size of the group last started
        self._growth: Growth | None = None
        self._checked_at = float("-inf")
        self._asked: tuple[int, str, float] | None = None  # (size, reason, monotonic time) of a pending growth
        # For the room being grown into: when warm processes were started (None: they could not be) and where
        self._warming: tuple[float | None, dict[str, int]] | None = None
        self._waiting_logged_at = float("-inf")

    def _per_worker(self) -> dict[str, float]:
        return dict(self.scaling_config._resources_per_worker_not_none)

    def _resize(self, size: int) -> Any:
        return ResizeDecision(num_workers=size, resources_per_worker=self._per_worker())

    def make_decision_for_non_running_worker_group(self) -> Any:
        self._maybe_send_resource_request()
        self._asked, self._warming = None, None
        choice = resize_policy.start_size(self.sizes, self._nodes(), self._per_worker())
        if choice.size is None:
            now = time.monotonic()
            if now - self._waiting_logged_at >= WAITING_LOG_S:
                self._waiting_logged_at = now
                self._record(f"waiting to start: {choice.reason}")
            return NoopDecision()
        if choice.size != self._size and (self._size is not None or choice.size != max(self.sizes)):
            before = self._size if self._size is not None else max(self.sizes)
            self._record(
                f"starting {choice.size} worker(s): {choice.reason}",
                ResizeRecord(
                    from_workers=before,
                    to_workers=choice.size,
                    reason=choice.reason,
                ),
            )
        self._size = choice.size
        return self._resize(choice.size)

    def make_decision_for_running_worker_group(self, worker_group_state: Any, worker_group_status: Any) -> Any:
        self._maybe_send_resource_request()
        current = int(worker_group_state.num_workers)
        self._size = current
        if self._asked is not None:
            return self._grow_when_ready(current)
        now = time.monotonic()
        if current >= max(self.sizes) or now - self._checked_at < CHECK_S:
            return NoopDecision()
        self._checked_at = now
        nodes = self._nodes()
        self._growth = resize_policy.grow_size(self.sizes, current, nodes, self._per_worker(), now, self._growth)
        target = self._growth.target
        if target is None:  # no room (or it went): warm processes started for it stay idle, then Ray trims them
            self._warming = None
            return NoopDecision()
        if self._warming is None:
            used = {str(worker.metadata.node_id) for worker in worker_group_state.workers}
            joining = {
                n.node_id: min(resize_policy.workers_on(n, self._per_worker()), target - current)
                for n in nodes
                if n.reachable and n.node_id not in used and resize_policy.workers_on(n, self._per_worker())
            }
            started = now if joining and self._prestart(joining) else None  # tried once for this room
            self._warming = (started, joining)
            if started is not None:
                self._record(
                    f"room for {target} worker(s): starting warm processes on {len(joining)} joining node(s) while "
                    f"the group of {current} trains on"
                )
        if self._growth.size is None:
            return NoopDecision()
        started, joining = self._warming
        go, state = resize_policy.warm_wait(started, started is not None and self._warm(joining), now)
        if not go:
            return NoopDecision()
        return self._ask(self._growth.size, f"{self._growth.reason}; {state}", now)

    def _ask(self, size: int, reason: str, now: float) -> Any:
        resize_signal.ask(self.run, size, reason)
        self._asked = (size, reason, now)
        self._record(f"{reason}: asked the workers to back up and pause first")
        return NoopDecision()

    def _prestart(self, joining: dict[str, int]) -> bool:
        """Ask each joining node's raylet for as many warm processes as it will hold workers; False where that
        cannot be done (no runtime env published yet, a Ray that moved): the growth goes on cold."""
        from orchestrator import raylet

        try:
            runtime_env = resize_signal.runtime_env(self.run)
            if runtime_env is None:
                return False
            job_id = ray.get_runtime_context().get_job_id()
            for node_id, count in joining.items():
                raylet.prestart(raylet.raylet(node_id), job_id, runtime_env, count)
        except Exception as exc:  # an optimisation: the new workers start cold
            log.warning("could not start warm processes on the joining node(s): %s: %s", type(exc).__name__, exc)
            return False
        return True

    def _warm(self, joining: dict[str, int]) -> bool:
        """Whether every joining node has as many idle processes with TensorFlow preloaded as it will hold workers."""
        from orchestrator import raylet
        from orchestrator.worker.preload import preloaded_seconds

        try:
            job_id = ray.get_runtime_context().get_job_id()
            for node_id, count in joining.items():
                idle = raylet.idle_processes(raylet.raylet(node_id), job_id)
                if sum(preloaded_seconds(pid) is not None for pid in idle) < count:
                    return False
        except Exception as exc:  # the node went again, or Ray moved: do not wait for it
            log.warning("could not see the joining node(s)' warm processes: %s: %s", type(exc).__name__, exc)
            return True
        return True

    def _grow_when_ready(self, current: int) -> Any:
        assert self._asked is not None
        size, reason, asked_at = self._asked
        where = resize_signal.is_ready(self.run)
        if where is None:
            if time.monotonic() - asked_at < GROW_WAIT_S:
                return NoopDecision()
            resize_signal.clear(self.run)
            self._asked, self._growth = None, None
            self._record(f"the workers did not pause for the growth to {size} within {GROW_WAIT_S:.0f} s; not growing")
            return NoopDecision()
        resize_signal.clear(self.run)
        self._asked, self._growth = None, None
        self._record(
            f"growing from {current} to {size} worker(s) from backup {where}",
            ResizeRecord(
                from_workers=current,
                to_workers=size,
                reason=reason,
                backup=where,
            ),
        )
        self._size = size
        return self._resize(size)

    def _record(self, line: str, record: ResizeRecord | None = None) -> None:
        """Log ``line`` here and in the job's controller.log; store ``record`` in resizes.jsonl."""
        from orchestrator.store import JobStore

        log.info(line)
        try:
            store = JobStore(self.store_url)
            if record is not None:
                store.append_resize(self.job, record)
            stamp = utc_now().strftime("%Y-%m-%d %H:%M:%S")
            store.append_log(self.job, "controller.log", f"{stamp} [controller] {line}\n")
        except Exception as exc:  # the record is a report: the decision stands
            log.warning("could not record the resize in the store: %s: %s", type(exc).__name__, exc)


def install(scaling_config: Any, policy: Callable[[Any], Any]) -> None:
    """Make ``TensorflowTrainer.fit`` use ``policy(scaling_config)`` for this ``scaling_config`` (by identity);
    every other trainer in this process keeps Ray Train's own policy."""
    from ray.train.v2.api import data_parallel_trainer

    current = data_parallel_trainer.create_scaling_policy  # type: ignore[attr-defined]
    chosen: dict[int, Callable[[Any], Any]] = getattr(current, "orchestrator_policies", None) or {}
    if not hasattr(current, "orchestrator_policies"):
        original = current

        def create_scaling_policy(config: Any) -> Any:
            made = chosen.pop(id(config), None)
            return made(config) if made is not None else original(config)

        create_scaling_policy.orchestrator_policies = chosen  # type: ignore[attr-defined]
        data_parallel_trainer.create_scaling_policy = create_scaling_policy  # type: ignore[attr-defined,assignment]
    chosen[id(scaling_config)] = policy
