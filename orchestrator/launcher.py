"""Connecting to Ray: an embedded local instance, or the cluster in ``--address`` / ``$RAY_ADDRESS``."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.errors import ClusterError
from orchestrator.reach import host_port, notice_after, unreachable

# Set in every process of a job (driver, Ray Train's controller, workers) before anything imports TensorFlow
# (docs/architecture.md, "Keras 3 under MultiWorkerMirroredStrategy": tf_keras works, Keras 3 fails).
WORKER_ENV = {
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "RAY_TRAIN_V2_ENABLED": "1",
}
# Ray Train's defaults, tightened (a user's own value in the environment wins): its controller checks the
# workers every 2 s (a SIGKILLed worker was noticed 1.2 s after its death on median in the bench, of a 12 s
# resume; about 0.3 s with checks every 0.5 s, of a 4 s one) and its drain watcher polls every 5 s (a notice
# with a 30 s deadline would lose a sixth of it). Each check is one small call to each worker or to the GCS.
RAY_TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1",
}


def job_env() -> dict[str, str]:
    """The environment variables a job's runtime env sets in all its processes."""
    return {**WORKER_ENV, **{key: os.environ.get(key, value) for key, value in RAY_TRAIN_ENV.items()}}


def job_runtime_env() -> dict[str, Any]:
    """The job-level runtime env: ``job_env()`` in every process, and the warm pool's setup hook.

    The hook imports TensorFlow only in processes started for training workers (``worker.preload``); it must
    be set for the whole job: Ray ignores a setup hook in a single actor's runtime env.
    """
    from orchestrator.worker.preload import HOOK

    return {"env_vars": job_env(), "worker_process_setup_hook": HOOK}


def prepare_driver_environment() -> None:
    """The driver imports TensorFlow through ``ray.train.tensorflow``: the same settings apply to it."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


# ray.init(address=...) tries to reach the GCS 20 times (Ray's NUM_REDIS_GET_RETRIES), each attempt about 40 s when
# the port takes connections but no GCS answers (measured: 14 min before an error). Three attempts tolerate a head
# whose GCS is still starting (about 2 min); a user's own value in the environment wins.
GCS_ATTEMPTS_ENV, GCS_ATTEMPTS = "RAY_gcs_server_port_wait_time_s", "3"
GCS_NOTICE_S = 10.0
ADDRESS_HINT = (
    "check --address / $RAY_ADDRESS / `address` in the config file (a Ray head's GCS, HOST:6379, or ray://HOST:10001); "
    "start a local head with: orchestrator up; or leave the address unset to train on an embedded local Ray"
)

EMBEDDED_HINT = "check the address (ray status --address ...), or unset RAY_ADDRESS to run on this machine"


def check_ray_address(address: str | None) -> None:
    """Fail in seconds, naming the address, when the Ray cluster ``address`` (else ``$RAY_ADDRESS``) names cannot be
    reached: an unknown host or a refused connection is certain, where ``ray.init`` would retry for minutes.

    Raises:
        ClusterError: the host is unknown, refuses the connection, or does not answer within a bounded wait.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    target = host_port(address) if address and address not in ("auto", "local") else None
    if target is None:
        return
    why = unreachable(*target, f"the Ray cluster at {address}")
    if why is not None:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {why}", hint=ADDRESS_HINT)


# Whether the Ray this process attached to is one it started itself (fixed size: no autoscaler will add nodes).
_embedded = True


def connect_ray(address: str | None = None) -> str:
    """Attach to Ray, starting an embedded local instance when no address is given; returns a description.

    Reuses a Ray already initialised in this process (tests share one per session).
    """
    global _embedded
    prepare_driver_environment()
    import ray

    if ray.is_initialized():
        return "the Ray instance already running in this process"
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Inside a job submitted through the Jobs API the job's runtime env (working_dir, WORKER_ENV) is already the
    # job's: giving ray.init another one makes Ray merge them into a new environment, and the working dir this
    # process runs in was then seen to vanish under it (FileNotFoundError from os.getcwd, intermittently).
    submitted = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    runtime_env = None if submitted else job_runtime_env()
    try:
        if address:
            _init_bounded(ray, address, runtime_env)
            _embedded = False
            return f"Ray cluster at {address}"
        # The embedded instance's token is made and used on this machine only; Ray's notice about it (and how
        # to turn authentication off) is noise for someone who asked for no set-up.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(
            address="local",  # always a new instance: never attach to a `ray start` cluster found on this machine
            runtime_env=runtime_env,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except Exception as exc:  # ray.init raises ConnectionError, RuntimeError, ValueError, AuthenticationError...
        where = address or "a local embedded instance"
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ClusterError(
            f"cannot start or reach Ray ({where}): {first}",
            hint=ADDRESS_HINT if address else EMBEDDED_HINT,
        ) from exc
    _embedded = True
    return "an embedded local Ray instance"


def _init_bounded(ray: Any, address: str, runtime_env: dict[str, Any] | None) -> None:
    """``ray.init(address)`` with Ray's GCS connection attempts bounded, saying what it waits for when it is slow."""
    own = os.environ.get(GCS_ATTEMPTS_ENV)
    if own is None:
        os.environ[GCS_ATTEMPTS_ENV] = GCS_ATTEMPTS  # read when the GCS client connects, in this call only
    bound = "about 2 min" if own is None else f"{GCS_ATTEMPTS_ENV}={own} attempts of about 40 s"
    waiting = (
        f"the Ray cluster at {address} takes connections but its GCS has not answered in {GCS_NOTICE_S:g} s (a head "
        f"still starting, or not a Ray head's GCS port); waiting up to {bound}"
    )
    if address.startswith("ray://"):  # Ray Client: its own connection timeout, no GCS attempts
        waiting = f"the Ray Client server at {address} has not answered in {GCS_NOTICE_S:g} s; waiting for it"
    try:
        with notice_after(GCS_NOTICE_S, waiting):
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
    finally:
        if own is None:
            os.environ.pop(GCS_ATTEMPTS_ENV, None)


def check_resources(workers: int, cpus_per_worker: float, gpus_per_worker: int) -> str | None:
    """Refuse, before any worker is requested, a job that a Ray without an autoscaler can never place.

    Ray Train would otherwise wait for the resources and retry its start-up forever. On a cluster that
    may scale up (an address was given), returns a warning instead of raising.
    """
    import ray

    total: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    needed = {"CPU": workers * cpus_per_worker, "GPU": float(workers * gpus_per_worker)}
    short = {kind: amount for kind, amount in needed.items() if amount > total.get(kind, 0.0) + 1e-9}
    if not short:
        return None
    have = ", ".join(f"{total.get(kind, 0.0):g} {kind}" for kind in needed)
    want = ", ".join(f"{amount:g} {kind}" for kind, amount in needed.items() if amount)
    each = f"{cpus_per_worker:g} CPU" + (f" + {gpus_per_worker} GPU" if gpus_per_worker else "")
    message = f"scaling: the job needs {want} ({workers} worker(s) x {each}), but the Ray cluster has {have}"
    if _embedded:
        raise ClusterError(
            message,
            hint="lower scaling.workers or scaling.cpus_per_worker/gpus_per_worker, or run on a larger cluster "
            "with --address / $RAY_ADDRESS",
        )
    return message + "; waiting for the cluster to scale up"


def tensorflow_trainer_class() -> Any:
    """Import Ray Train's TensorflowTrainer (which imports TensorFlow) without TensorFlow's C++ banner.

    TF 2.21 writes its start-up lines (oneDNN, CUDA stubs) to native stderr before its logging is configured:
    neither TF_CPP_MIN_LOG_LEVEL nor ABSL/GLOG settings silence them (measured). They are captured here and
    shown only if the import fails. Call from the main thread, before any live display starts.
    """
    prepare_driver_environment()
    failure: ImportError | None = None
    with _native_stderr_captured() as captured:
        try:
            from ray.train.tensorflow import TensorflowTrainer
        except ImportError as exc:
            failure = exc
    if failure is not None:
        sys.stderr.write(captured())  # what TensorFlow said while failing, now that stderr is back
        raise ClusterError(
            f"cannot import Ray Train's TensorFlow support: {failure}",
            hint="install the project's dependencies: pip install -e .",
        ) from failure
    return TensorflowTrainer


@contextmanager
def _native_stderr_captured() -> Iterator[Callable[[], str]]:
    """Send file descriptor 2 to a temporary file; yields a function that returns what was captured."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as sink:
        os.dup2(sink.fileno(), 2)

        def captured() -> str:
            sink.seek(0)
            return sink.read()

        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
