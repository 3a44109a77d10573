"""How many workers an elastic job (``scaling.min_workers``) runs on, as a function of the nodes Ray has.

No Ray, no TensorFlow: ``orchestrator.elastic`` (in Ray Train's controller) reads the nodes and asks this
module. Two decisions:

* **a group to start** (the first, or after a failure): the largest allowed size that the live nodes can hold,
  or none (wait) when even ``min_workers`` cannot be placed;
* **a running group**: whether a larger allowed size now fits (a node came back). Growing is a restart, so it
  is asked for only once the room has been there for ``GROW_AFTER_S`` (a node that joins and goes at once
  costs nothing), and carried out from a backup the workers take at a step they agree on (no step is lost).

Sizes are the counts from ``scaling.workers`` down to ``scaling.min_workers`` that split the global batch evenly
over their replicas (``ScalingSpec.sizes``): the global batch, and so the trajectory, is the same at every size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

GROW_AFTER_S = 2.0
# How long a growth waits for warm processes (TensorFlow preloaded) on the joining node(s), from the first sight
# of the room, before it restarts with cold ones. Waiting W s more at size s of S loses W * (1 - s/S) s of
# full-size training; a warm start saves the cold import, about 6 s here: at half size, waiting pays up to
# about 12 s. An idle joining node preloads in about 7 s, so most growths start warm well within this.
WARM_WAIT_S = 15.0


@dataclass(frozen=True)
class NodeView:
    """A live node as the controller sees it: its total resources, and whether its raylet answers."""

    node_id: str
    resources: Mapping[str, float]
    reachable: bool = True


def workers_on(node: NodeView, per_worker: Mapping[str, float]) -> int:
    """How many workers of ``per_worker`` the node holds (its total resources: a job's own workers count as room)."""
    wanted = {k: v for k, v in per_worker.items() if v > 0}
    if not node.reachable:
        return 0
    if not wanted:
        return 1 << 16
    return int(min(node.resources.get(k, 0.0) // v for k, v in wanted.items()))


def placeable(nodes: Sequence[NodeView], per_worker: Mapping[str, float]) -> int:
    return sum(workers_on(node, per_worker) for node in nodes)


@dataclass(frozen=True)
class Choice:
    size: int | None  # None: no allowed size fits; wait for capacity
    reason: str


def start_size(sizes: Sequence[int], nodes: Sequence[NodeView], per_worker: Mapping[str, float]) -> Choice:
    """The size of a group to start now: the largest allowed size that fits, or None."""
    room = placeable(nodes, per_worker)
    lost = [n.node_id[:12] for n in nodes if not n.reachable]
    gone = f"; node(s) {', '.join(lost)} do not answer" if lost else ""
    fits = [n for n in sizes if n <= room]
    if not fits:
        return Choice(None, f"the live nodes hold {room} worker(s), fewer than min_workers ({min(sizes)}){gone}")
    size = fits[0]
    if size == max(sizes):
        return Choice(size, f"all {size} worker(s) can be placed")
    skipped = [n for n in range(size + 1, room + 1) if n not in sizes and n <= max(sizes)]
    split = f" ({', '.join(map(str, skipped))} would not split the global batch evenly)" if skipped else ""
    return Choice(size, f"{room} of {max(sizes)} worker(s) can be placed now{gone}: continuing on {size}{split}")


@dataclass(frozen=True)
class Growth:
    """A running group's growth check: the size to grow to once ``since`` is old enough, and why."""

    size: int | None
    since: float | None
    reason: str = ""
    target: int | None = None  # the size a growth would go to, from the first sight of the room (warm it then)


def grow_size(
    sizes: Sequence[int],
    current: int,
    nodes: Sequence[NodeView],
    per_worker: Mapping[str, float],
    now: float,
    seen: Growth | None,
) -> Growth:
    """Whether to grow a running group of ``current`` workers: ``size`` is set once a larger allowed size has
    fit for ``GROW_AFTER_S`` (``seen`` is the previous check's answer; ``now`` monotonic seconds)."""
    room = placeable(nodes, per_worker)
    larger = [n for n in sizes if current < n <= room]
    if not larger:
        return Growth(None, None)
    since = seen.since if seen is not None and seen.since is not None else now
    size = larger[0]
    if now - since < GROW_AFTER_S:
        return Growth(None, since, target=size)
    return Growth(
        size,
        since,
        f"room for {room} worker(s) again for {now - since:.1f} s: growing from {current} to {size}",
        target=size,
    )


def warm_wait(warming_since: float | None, warm: bool, now: float) -> tuple[bool, str]:
    """Whether a growth that is due may be asked for now, given the warm processes started on the joining
    node(s) at ``warming_since`` (None: none could be started), and how they stand (for the log)."""
    if warming_since is None:
        return True, "no warm processes could be started there: new workers start cold"
    waited = now - warming_since
    if warm:
        return True, f"warm processes on the joining node(s) ready after {waited:.1f} s"
    if waited >= WARM_WAIT_S:
        return (
            True,
            f"warm processes on the joining node(s) not ready after {WARM_WAIT_S:.0f} s: new workers start cold",
        )
    return False, f"waiting for warm processes on the joining node(s) ({waited:.1f} s of at most {WARM_WAIT_S:.0f} s)"
