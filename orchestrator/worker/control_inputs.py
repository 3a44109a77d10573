"""What rank 0 reads for a control decision besides the clock and the epoch's metrics: the job's commands,
acks and branches (read by a background poller, so training never waits on storage), and this worker's copy of
Ray Train's node-drain notice."""

from __future__ import annotations

import logging
import threading
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.records import BranchRecord, Command, CommandAck
from orchestrator.store import JobStore

POLL_SECONDS = 0.5


def local_drain_notice() -> Any:
    """A reader of this worker's copy of Ray Train's node-drain notice, or None where Ray has no such copy.

    Ray Train's preemption watcher hands the same ``PreemptionInfo`` to every worker of the group, and
    ``ray.train.get_preemption_info()`` is a broadcast of rank 0's copy: reading that copy on rank 0 and sending
    it with the decision gives every worker the same value for one collective instead of two. The copy is
    internal to Ray Train (2.60's ``TrainContext.preemption_context``); every worker runs the same Ray, so all
    take the same path.
    """
    try:
        from ray.train.v2._internal.execution.context import TrainContext, get_train_context
        from ray.train.v2._internal.execution.preemption import PreemptionContext
    except ImportError:
        return None
    fields = getattr(TrainContext, "__dataclass_fields__", {}), getattr(PreemptionContext, "__dataclass_fields__", {})
    if "preemption_context" not in fields[0] or "preemption_info" not in fields[1]:
        return None  # another layout: every worker asks Ray collectively instead

    def read() -> Any:
        return get_train_context().preemption_context.preemption_info

    return read


LOCAL_DRAIN_NOTICE = local_drain_notice()


class CommandPoller:
    """Rank 0's background reader of the job's commands, acks and branches."""

    def __init__(self, store: JobStore, job: str, log: logging.Logger) -> None:
        self._store, self._job, self._log = store, job, log
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.commands: list[Command] = []
        self.acks: dict[int, CommandAck] = {}
        self.branches: list[BranchRecord] = []
        self._poll()
        self._thread = threading.Thread(target=self._run, name="command-poller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        commands = self._store.read_commands(self._job)
        acks = self._store.read_acks(self._job)
        branches = self._store.read_branches(self._job)
        with self._lock:
            self.commands, self.branches = commands, branches
            self.acks = {**acks, **{seq: a for seq, a in self.acks.items() if seq not in acks}}

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._poll()
            except OrchestratorError as exc:  # the store may be briefly unreachable: try again next time
                self._log.warning("command poll: %s", exc.message)

    def view(self) -> tuple[list[Command], dict[int, CommandAck], list[BranchRecord]]:
        with self._lock:
            return list(self.commands), dict(self.acks), list(self.branches)

    def recorded(self, ack: CommandAck) -> None:
        with self._lock:
            self.acks[ack.seq] = ack

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
