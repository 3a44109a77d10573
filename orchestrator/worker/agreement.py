"""How the workers of a group agree: rank 0's value on every worker (``agreed``), every rank's value on rank 0
(``gathered``). Both are barriers too: no worker leaves before every worker has arrived.

Two transports carry them:

* **TensorFlow's coordination service**, once the strategy is made (``use_coordination_service``). Under
  MultiWorkerMirroredStrategy rank 0's process runs it and every worker is connected to it before its strategy
  exists, so an agreement is a key rank 0 puts, the others' blocking reads, and a barrier: a few milliseconds.
* **Ray Train's collectives** (``broadcast_from_rank_zero``, ``barrier``) otherwise. They travel through Ray
  Train's synchronisation actor, a process Ray Train creates with each worker group. Measured here, that actor was
  ready 2-3 s after a restart began (its module imports Ray Train, Ray Data and pyarrow: 1 s and 110 MB in an
  idle process), and every worker's first agreement of the attempt waited for it: 1.2-1.6 s of each restart.

Every worker of a group takes the same transport: the choice depends only on the world size and on TensorFlow
having the calls used (``coordination_problem``, which a unit test runs against the installed TensorFlow).
Agreements happen in the same order on every worker (they are collectives), so the n-th agreement of a process
has the same key everywhere. Each attempt's processes, and its coordination service, are new.
"""

from __future__ import annotations

import base64
import itertools
import logging
import pickle
import uuid
from typing import Any, TypeVar

import ray.train

T = TypeVar("T")

PREFIX = "orchestrator/agree"
# A barrier waits for the slowest worker (rank 0 downloading a data set, or uploading a backup before it says it
# is there): a worker that is gone ends the wait far sooner (the coordination service reports it to the others).
WAIT_MS = 24 * 3600 * 1000
CALLS = ("set_config_key_value", "get_config_key_value", "delete_config_key_value", "wait_at_barrier")


def coordination_problem() -> str | None:
    """Why TensorFlow's coordination service cannot carry agreements here (calls missing), or None."""
    try:
        from tensorflow.python.eager import context
    except ImportError as exc:
        return f"TensorFlow's eager context is not importable ({exc})"
    missing = [name for name in CALLS if not callable(getattr(context.Context, name, None))]
    if missing:
        return f"TensorFlow's context has no {', '.join(missing)}"
    return None


class CoordinationChannel:
    """Agreements through TensorFlow's coordination service (keys under ``PREFIX``, one barrier each)."""

    def __init__(self, rank: int, world_size: int) -> None:
        from tensorflow.python.eager import context

        self.rank, self.world_size = rank, world_size
        self._context = context.context()
        self._count = itertools.count()

    def agree(self, value: T) -> T:
        key = f"{PREFIX}/{next(self._count)}"
        if self.rank == 0:
            sent = _encode(value)
            self._context.set_config_key_value(key, sent)
        else:
            sent = self._context.get_config_key_value(key)  # blocks until rank 0 has put it
        self._context.wait_at_barrier(key, WAIT_MS)
        if self.rank == 0:  # every worker read it before the barrier
            self._context.delete_config_key_value(key)
        received: T = _decode(sent)  # a copy on rank 0 too, as on the others
        return received

    def gather(self, value: T) -> list[T] | None:
        key = f"{PREFIX}/{next(self._count)}"
        self._context.set_config_key_value(f"{key}/{self.rank}", _encode(value))
        values: list[T] | None = None
        if self.rank == 0:
            values = [_decode(self._context.get_config_key_value(f"{key}/{r}")) for r in range(self.world_size)]
        self._context.wait_at_barrier(key, WAIT_MS)
        if self.rank == 0:
            self._context.delete_config_key_value(key)  # the key's folder: every rank's value
        return values


_channel: CoordinationChannel | None = None


def use_coordination_service(rank: int, world_size: int, log: logging.Logger) -> bool:
    """From now on, this process's agreements go through TensorFlow's coordination service (call right after
    the MultiWorkerMirroredStrategy is made, on every worker); returns whether they do. Where the service's calls
    are missing, they stay on Ray Train's collectives, with one log line (every worker decides the same)."""
    global _channel
    if world_size < 2:
        _channel = None
        return False
    problem = coordination_problem()
    if problem is not None:
        log.warning(
            "agreements through Ray Train's synchronisation actor (about 1.5 s more at each restart): %s", problem
        )
        _channel = None
        return False
    _channel = CoordinationChannel(rank, world_size)
    return True


def agreed(value: T) -> T:
    """Rank 0's ``value`` on every worker (a barrier too): decisions are taken once, never per worker.

    Through Ray Train, the value travels pickled, as bytes: its synchronisation actor, which relays it, would
    otherwise unpickle it, importing the modules of its classes (TensorFlow, with the controller's ``Decision``)
    into that actor on the first agreement of each attempt; measured here, a 2-2.5 s wait for every worker.
    """
    context = ray.train.get_context()
    if context.get_world_size() == 1:
        return value
    if _channel is not None:
        return _channel.agree(value)
    from ray.train.collective import broadcast_from_rank_zero

    sent = pickle.dumps(value) if context.get_world_rank() == 0 else None
    received: T = pickle.loads(broadcast_from_rank_zero(sent))
    return received


def gathered(value: T) -> list[T] | None:
    """Every rank's ``value``, by rank, on rank 0 (None on the others); a barrier for all.

    Ray Train's collectives only broadcast from rank 0, so without the coordination service each rank leaves its
    value in Ray's internal key-value store under a key rank 0 chose, and rank 0 reads them after a barrier.
    """
    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    if size == 1:
        return [value]
    if _channel is not None:
        return _channel.gather(value)
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_put
    from ray.train.collective import barrier

    from orchestrator.worker.preload import KV_NAMESPACE

    token = agreed(uuid.uuid4().hex if rank == 0 else None)
    _internal_kv_put(f"gather/{token}/{rank}", pickle.dumps(value), namespace=KV_NAMESPACE)
    barrier()
    if rank != 0:
        return None
    values: list[T] = []
    for other in range(size):
        key = f"gather/{token}/{other}"
        values.append(pickle.loads(_internal_kv_get(key, namespace=KV_NAMESPACE)))
        _internal_kv_del(key, namespace=KV_NAMESPACE)
    return values


def _encode(value: Any) -> str:
    return base64.b64encode(pickle.dumps(value)).decode("ascii")


def _decode(text: str) -> Any:
    return pickle.loads(base64.b64decode(text))
