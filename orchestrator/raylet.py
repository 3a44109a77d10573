"""What the orchestrator asks of a node's raylet that Ray has no public API for: prestarted idle processes.

A raylet places a new actor only in an idle process of the same job whose runtime env matches the actor's exactly
and that has never run anything; otherwise it starts a new Python process (seconds, on the restart path). Two
kinds of process are kept idle for a restart:

* the training workers' (``worker.warm_pool``): their runtime env carries ``ORCHESTRATOR_TRAIN_WORKER=1`` and
  the setup hook imports TensorFlow in them;
* the job's plain processes, on the node of Ray Train's controller (``restart_hooks``): each new worker group
  gets a new synchronisation actor, which inherits the controller's runtime env; its process must be up before
  any agreement that goes through Ray Train's collectives (``worker.agreement``), or every worker waits for it.

These helpers use Ray's internal modules (``NodeManagerService.PrestartWorkers`` and ``GetNodeStats``).
``ray_internals_problem`` checks each of them; a unit test calls it, so a Ray upgrade that moves one fails there,
and at run time any mismatch turns the feature off with one log line. Import-light: Ray Train's controller
imports this module, and it must not import TensorFlow.
"""

from __future__ import annotations

from typing import Any

import ray

from orchestrator.worker.preload import TRAIN_WORKER_FLAG

KEEP_ALIVE_S = 3600  # the raylet does not stop a prestarted idle process for this long
RPC_TIMEOUT_S = 10.0


def ray_internals_problem() -> str | None:
    """What, of Ray's internals the prestarted processes and ``gathered`` use, is missing; None if all is there."""
    try:
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc, runtime_environment_pb2
        from ray.experimental import internal_kv
    except ImportError as exc:
        return f"a Ray module moved: {exc}"
    wanted = {
        node_manager_pb2.PrestartWorkersRequest: {
            "language",
            "job_id",
            "runtime_env_info",
            "keep_alive_duration_secs",
            "num_workers",
        },
        runtime_environment_pb2.RuntimeEnvInfo: {"serialized_runtime_env"},
        node_manager_pb2.GetNodeStatsRequest: {"include_memory_info"},
        node_manager_pb2.GetNodeStatsReply: {"core_workers_stats"},
        common_pb2.CoreWorkerStats: {
            "pid",
            "job_id",
            "actor_id",
            "worker_type",
            "num_executed_tasks",
            "num_running_tasks",
        },
    }
    for message, fields in wanted.items():
        missing = fields - {field.name for field in message.DESCRIPTOR.fields}
        if missing:
            return f"Ray's {message.DESCRIPTOR.full_name} has no field(s) {', '.join(sorted(missing))}"
    for method in ("PrestartWorkers", "GetNodeStats"):
        if not hasattr(node_manager_pb2_grpc.NodeManagerServiceServicer, method):
            return f"Ray's raylet has no {method} RPC"
    if common_pb2.WorkerType.Value("WORKER") != 0 or not callable(init_grpc_channel):
        return "Ray's worker types or gRPC channel helper changed"
    for name in ("_internal_kv_put", "_internal_kv_get", "_internal_kv_del"):
        if not callable(getattr(internal_kv, name, None)):
            return f"Ray's internal_kv has no {name}"
    return None


def prestart(stub: Any, job_id: str, runtime_env: str, count: int) -> None:
    """Ask a raylet for ``count`` idle Python processes of ``job_id`` with the runtime env ``runtime_env``."""
    from ray.core.generated import common_pb2, node_manager_pb2, runtime_environment_pb2

    stub.PrestartWorkers(
        node_manager_pb2.PrestartWorkersRequest(
            language=common_pb2.PYTHON,
            job_id=bytes.fromhex(job_id),
            runtime_env_info=runtime_environment_pb2.RuntimeEnvInfo(serialized_runtime_env=runtime_env),
            keep_alive_duration_secs=KEEP_ALIVE_S,
            num_workers=count,
        ),
        timeout=RPC_TIMEOUT_S,
    )


def idle_processes(stub: Any, job_id: str) -> list[int]:
    """Pids of this node's processes of ``job_id`` that have run nothing yet (a new actor may land in them)."""
    from ray.core.generated import common_pb2, node_manager_pb2

    reply = stub.GetNodeStats(node_manager_pb2.GetNodeStatsRequest(include_memory_info=False), timeout=RPC_TIMEOUT_S)
    job = bytes.fromhex(job_id)
    pids = []
    for worker in reply.core_workers_stats:
        if worker.worker_type != common_pb2.WorkerType.Value("WORKER") or worker.job_id != job:
            continue
        if worker.actor_id.strip(b"\xff") or worker.num_executed_tasks or worker.num_running_tasks:
            continue  # hosts an actor, or has run a task: Ray will not place a new actor in it
        pids.append(worker.pid)
    return pids


def idle_warm_processes(stub: Any, job_id: str) -> list[int]:
    """Pids of this node's idle training-worker processes of ``job_id``."""
    return [pid for pid in idle_processes(stub, job_id) if is_training_worker_process(pid)]


def has_environment(pid: int, variables: dict[str, str]) -> bool:
    """Whether process ``pid`` (on this node) has every one of ``variables`` set to its value, and is not a
    training worker's process."""
    present = _environment(pid)
    wanted = {f"{key}={value}".encode() for key, value in variables.items()}
    return present is not None and wanted <= present and _TRAIN_WORKER_ENTRY not in present


def is_training_worker_process(pid: int) -> bool:
    """Whether process ``pid`` (on this node) was started with the training workers' runtime env."""
    present = _environment(pid)
    return present is not None and _TRAIN_WORKER_ENTRY in present


_TRAIN_WORKER_ENTRY = f"{TRAIN_WORKER_FLAG}=1".encode()


def _environment(pid: int) -> set[bytes] | None:
    """Process ``pid``'s environment entries (``KEY=value``) as it was started, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return set(environ.read().split(b"\0"))
    except OSError:
        return None


def raylet(node_id: str) -> Any:
    """A gRPC stub for the raylet of Ray node ``node_id``."""
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import node_manager_pb2_grpc

    node = next((n for n in ray.nodes() if n.get("NodeID") == node_id and n.get("Alive")), None)
    if node is None:
        raise RuntimeError(f"Ray node {node_id[:12]} is not in the cluster's node table")
    address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
    return node_manager_pb2_grpc.NodeManagerServiceStub(init_grpc_channel(address))
