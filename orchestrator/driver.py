"""The job's driver: runs Ray Train's TensorflowTrainer for one attempt and records the outcome.

The only module (with ``launcher``) that talks to Ray's driver-side API. It owns ``status.json``.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError, TrainingFailedError
from orchestrator.launcher import tensorflow_trainer_class
from orchestrator.recipes.datasets import check_npz_reachable, prepare_keras_cache
from orchestrator.records import JobState, utc_now
from orchestrator.spec import KerasData, NpzData
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.worker.train_loop import WorkerConfig, train_loop_per_worker

log = logging.getLogger("orchestrator.driver")

EXCERPT_LINES = 12


class JobDriver:
    """Runs one attempt of a job recorded in the store, from PENDING to a final status.

    Example::

        connect_ray()
        state = JobDriver(store, "quickstart").run()
    """

    def __init__(self, store: JobStore, job: str) -> None:
        self.store = store
        self.job = job
        self.record = store.load_job(job)
        self._ended = threading.Lock()
        self._final: JobState | None = None

    def run(self) -> JobState:
        spec = self.record.spec
        keras_cache = self._prepare_data()
        attempt = self.store.read_state(self.job).attempt + 1
        self.store.set_status(self.job, JobStatus.RUNNING, attempt=attempt, started_at=utc_now(), reason=None)
        self._log(f"attempt {attempt}: starting {spec.scaling.workers} worker(s) for {spec.epochs} epochs")
        config = WorkerConfig(job=self.job, store_url=self.store.url, attempt=attempt, keras_cache_url=keras_cache)
        try:
            self._trainer(config).fit()
        except Exception as exc:
            failure = describe_failure(exc, self.job)
            self._log(f"attempt {attempt}: failed: {failure.message}\n{failure.excerpt}")
            self.fail(failure.message)
            raise failure from exc
        self._log(f"attempt {attempt}: trained all {spec.epochs} epochs")
        return self._end(JobStatus.SUCCEEDED, None)

    def fail(self, reason: str) -> JobState:
        """Record that the job ended with ``reason`` (also used when the user interrupts the driver)."""
        return self._end(JobStatus.FAILED, reason)

    def _end(self, status: JobStatus, reason: str | None) -> JobState:
        """The first outcome recorded wins: after Ctrl+C, Ray's teardown also fails ``fit()``, and that later
        failure must not replace the reason the user caused."""
        with self._ended:
            if self._final is not None:
                log.info("job %s already ended as %s; not recording %s (%s)", self.job, self._final.status,
                         status, reason)  # fmt: skip
                return self._final
            self._final = self.store.set_status(self.job, status, reason=reason, ended_at=utc_now())
            return self._final

    def _prepare_data(self) -> str | None:
        """Fail before any worker starts when the data cannot be had; download a keras dataset once.

        Returns the URL of the cached keras dataset, if the job uses one.
        """
        data = self.record.spec.data
        try:
            if isinstance(data, NpzData):
                check_npz_reachable(data)
            if not isinstance(data, KerasData):
                return None
            cache = self.store.dataset_cache_url(data.name)
            if prepare_keras_cache(data, cache):
                self._log(f"downloaded keras dataset {data.name} into the store cache {cache}")
            return cache
        except OrchestratorError as exc:
            self.fail(exc.message)
            raise

    def _trainer(self, config: WorkerConfig) -> Any:
        from ray.train import FailureConfig, RunConfig, ScalingConfig

        TensorflowTrainer = tensorflow_trainer_class()

        scaling = self.record.spec.scaling
        resources: dict[str, float] = {"CPU": scaling.cpus_per_worker}
        if scaling.gpus_per_worker:
            resources["GPU"] = scaling.gpus_per_worker
        return TensorflowTrainer(
            train_loop_per_worker,
            train_loop_config=config.model_dump(),
            scaling_config=ScalingConfig(
                num_workers=scaling.workers,
                use_gpu=scaling.gpus_per_worker > 0,
                resources_per_worker=resources,
            ),
            run_config=RunConfig(
                name=f"{self.job}-{self.record.id}-attempt-{config.attempt}",
                storage_path=self._ray_storage_path(),
                failure_config=FailureConfig(max_failures=0),
            ),
        )

    def _ray_storage_path(self) -> str:
        """Ray Train's own run folder: inside the job's folder for a local store, else a local scratch folder."""
        if self.store.is_local:
            return self.store.path(self.job, "ray")
        return str(Path.home() / ".orchestrator" / "ray")

    def _log(self, message: str) -> None:
        log.info(message)
        stamp = utc_now().strftime("%Y-%m-%d %H:%M:%S")
        self.store.append_log(self.job, "driver.log", f"{stamp} [driver] {message}\n")


def describe_failure(exc: BaseException, job: str) -> TrainingFailedError:
    """Turn what Ray Train raised into one message plus the end of the failing worker's traceback."""
    worker_failures: dict[int, BaseException] = getattr(exc, "worker_failures", None) or {}
    hint = f"full log: orchestrator logs {job}"
    if not worker_failures:
        excerpt = _tail("".join(traceback.format_exception(exc)))
        return TrainingFailedError(f"training failed: {type(exc).__name__}: {exc}", excerpt=excerpt, hint=hint)
    rank, original = min(worker_failures.items())  # Ray Train hands over each worker's own exception
    excerpt = _tail(str(exc))  # its message holds every failing rank's traceback snippet
    if isinstance(original, OrchestratorError):
        return TrainingFailedError(f"rank {rank}: {original.message}", excerpt=excerpt, hint=original.hint or hint)
    return TrainingFailedError(f"rank {rank} raised {type(original).__name__}: {original}", excerpt=excerpt, hint=hint)


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return os.linesep.join(lines[-EXCERPT_LINES:])
