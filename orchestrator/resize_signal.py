"""The handshake of an elastic job's growth, between Ray Train's controller and rank 0, in Ray's internal KV.

Growing a running group is a restart. So that no step is lost, the controller (``orchestrator.elastic``) does
not restart the group at once: it *asks* (``ask``), rank 0 reads the request at its next control point
(``requested``, about a second later), every worker backs up at that step and pauses, rank 0 says the backup
is stored (``ready``), and only then does the controller resize: the new group restores that backup.

Keys are per Ray Train run (``run``: the driver's ``RunConfig.name``), so two jobs on one cluster never read
each other's. Ray's internal KV is an internal API; ``raylet.ray_internals_problem`` checks it (a unit test
calls that), and a failure here leaves the job at its size, with one log line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

KV_NAMESPACE = "orchestrator"


@dataclass(frozen=True)
class GrowRequest:
    size: int
    reason: str


def _key(run: str, part: str) -> str:
    return f"resize/{run}/{part}"


def ask(run: str, size: int, reason: str) -> None:
    """Controller: ask the running group to back up and pause for a restart at ``size`` workers."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    _internal_kv_del(_key(run, "ready"), namespace=KV_NAMESPACE)
    _internal_kv_put(_key(run, "request"), json.dumps({"size": size, "reason": reason}), namespace=KV_NAMESPACE)


def requested(run: str) -> GrowRequest | None:
    """Rank 0: the controller's pending request, if any."""
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(_key(run, "request"), namespace=KV_NAMESPACE)
    if not raw:
        return None
    value = json.loads(raw)
    return GrowRequest(int(value["size"]), str(value["reason"]))


def ready(run: str, backup: str) -> None:
    """Rank 0: ``backup`` is stored and every worker has paused."""
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(_key(run, "ready"), backup, namespace=KV_NAMESPACE)


def is_ready(run: str) -> str | None:
    """Controller: the backup the paused group took for the growth, once it is stored."""
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(_key(run, "ready"), namespace=KV_NAMESPACE)
    return raw.decode() if raw else None


def publish_runtime_env(run: str, runtime_env: str) -> None:
    """Rank 0: the training workers' runtime env (Ray's serialized form), for warm processes on a joining node."""
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(_key(run, "runtime_env"), runtime_env, namespace=KV_NAMESPACE)


def runtime_env(run: str) -> str | None:
    """Controller: the training workers' runtime env, once a group of this run has published it."""
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(_key(run, "runtime_env"), namespace=KV_NAMESPACE)
    return raw.decode() if raw else None


def clear(run: str) -> None:
    """Controller: the resize is done (or given up); nothing is pending."""
    from ray.experimental.internal_kv import _internal_kv_del

    for part in ("request", "ready"):
        _internal_kv_del(_key(run, part), namespace=KV_NAMESPACE)
