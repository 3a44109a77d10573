"""Connecting to Ray: an embedded local instance, or the cluster in ``--address`` / ``$RAY_ADDRESS``."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.errors import ClusterError

# Set in every worker process before anything imports TensorFlow (PITFALLS.md 1: Keras 3 fails under
# MultiWorkerMirroredStrategy; tf_keras works).
WORKER_ENV = {
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "RAY_TRAIN_V2_ENABLED": "1",
}


def prepare_driver_environment() -> None:
    """The driver imports TensorFlow through ``ray.train.tensorflow``: the same settings apply to it."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


def connect_ray(address: str | None = None) -> str:
    """Attach to Ray, starting an embedded local instance when no address is given; returns a description.

    Reuses a Ray already initialised in this process (tests share one per session).
    """
    prepare_driver_environment()
    import ray

    if ray.is_initialized():
        return "the Ray instance already running in this process"
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": dict(WORKER_ENV)}
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
            return f"Ray cluster at {address}"
        # The embedded instance's token is made and used on this machine only; Ray's notice about it (and how
        # to turn authentication off) is noise for someone who asked for no set-up.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(
            runtime_env=runtime_env,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local embedded instance"
        raise ClusterError(
            f"cannot start or reach Ray ({where}): {exc}",
            hint="check the address (ray status --address ...), or unset RAY_ADDRESS to run on this machine",
        ) from exc
    return "an embedded local Ray instance"


def tensorflow_trainer_class() -> Any:
    """Import Ray Train's TensorflowTrainer (which imports TensorFlow) without TensorFlow's C++ banner.

    TF 2.21 writes its start-up lines (oneDNN, CUDA stubs) to native stderr before its logging is configured:
    neither TF_CPP_MIN_LOG_LEVEL nor ABSL/GLOG settings silence them (measured). They are captured here and
    shown only if the import fails. Call from the main thread, before any live display starts.
    """
    prepare_driver_environment()
    with _native_stderr_captured() as captured:
        try:
            from ray.train.tensorflow import TensorflowTrainer
        except ImportError:
            sys.stderr.write(captured.read())
            raise
    return TensorflowTrainer


@contextmanager
def _native_stderr_captured() -> Iterator[Any]:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
