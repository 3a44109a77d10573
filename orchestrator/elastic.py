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
        self, scaling_config: Any, *, sizes: Sequence[int], run: str, store_url: str, job: str,
        nodes: Callable[[], list[NodeView]] = live_nodes,
    ) -> None:  # fmt: skip
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
        self._waiting_logged_at = float("-inf")

    def _per_worker(self) -> dict[str, float]:
        return dict(self.scaling_config._resources_per_worker_not_none)

    def _resize(self, size: int) -> Any:
        return ResizeDecision(num_workers=size, resources_per_worker=self._per_worker())

    def make_decision_for_non_running_worker_group(self) -> Any:
        self._maybe_send_resource_request()
        self._asked = None
        choice = resize_policy.start_size(self.sizes, self._nodes(), self._per_worker())
        if choice.size is None:
            now = time.monotonic()
            if now - self._waiting_logged_at >= WAITING_LOG_S:
                self._waiting_logged_at = now
                self._record(f"waiting to start: {choice.reason}")
            return NoopDecision()
        if choice.size != self._size and (self._size is not None or choice.size != max(self.sizes)):
            before = self._size if self._size is not None else max(self.sizes)
            self._record(f"starting {choice.size} worker(s): {choice.reason}", ResizeRecord(
                from_workers=before, to_workers=choice.size, reason=choice.reason,
            ))  # fmt: skip
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
        self._growth = resize_policy.grow_size(
            self.sizes, current, self._nodes(), self._per_worker(), now, self._growth
        )
        if self._growth.size is None:
            return NoopDecision()
        size, reason = self._growth.size, self._growth.reason
        resize_signal.ask(self.run, size, reason)
        self._asked = (size, reason, now)
        self._record(f"{reason}: asked the workers to back up and pause first")
        return NoopDecision()

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
        self._record(f"growing from {current} to {size} worker(s) from backup {where}", ResizeRecord(
            from_workers=current, to_workers=size, reason=reason, backup=where,
        ))  # fmt: skip
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
