"""The job's driver: runs Ray Train's TensorflowTrainer and records the outcome.

Ray Train restarts a failed worker group by itself (``FailureConfig``), up to the spec's budgets; each new
group restores the latest backup (``orchestrator.worker.backup``). The driver sees only the final outcome.

The only module (with ``launcher``) that talks to Ray's driver-side API. With the runner, in the driving process,
it owns ``status.json`` while the job is active (``orchestrator.lifecycle``).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from ray.train.v2.api.callback import UserCallback  # V2's own classes: `ray.train.X` is chosen at runtime

from orchestrator import recovery
from orchestrator.errors import FailureKind, OrchestratorError, TrainingFailedError
from orchestrator.launcher import check_resources, tensorflow_trainer_class
from orchestrator.notify import Notifier
from orchestrator.recipes.datasets import check_image_folder_reachable, check_npz_reachable, prepare_keras_cache
from orchestrator.records import FailureRecord, JobState, utc_now
from orchestrator.recovery import recovery_transition
from orchestrator.restart_hooks import FastRestart
from orchestrator.spec import ImageFolderData, KerasData, NpzData
from orchestrator.status import JobStatus
from orchestrator.store import JobStore
from orchestrator.tracking import TrackingThread, tracker_for
from orchestrator.user_config import load_config
from orchestrator.worker.config import WorkerConfig
from orchestrator.worker.preload import TRAIN_WORKER_FLAG
from orchestrator.worker.train_loop import train_loop_per_worker

log = logging.getLogger("orchestrator.driver")

EXCERPT_LINES = 12
WATCH_SECONDS = 0.5
# Ray Train's own start-up failures (e.g. a worker group that cannot be placed within its timeout) are retried
# without limit by default: a job that can never start would wait forever.
CONTROLLER_FAILURE_LIMIT = 5


class JobDriver:
    """Runs a job recorded in the store, from PENDING to a final status, through every worker-group restart.

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
        self.interrupted: str | None = None  # set on Ctrl+C: a stop that follows says it was the user's interrupt
        self.notifier = self._notifier()
        self.tracking = self._tracking()

    def run(self) -> JobState:
        """Train to the end; whatever stops the driver first (an error, Ctrl+C) is recorded as FAILED with it."""
        try:
            return self._run()
        except OrchestratorError as exc:
            self.fail(exc.message)
            raise
        except BaseException as exc:
            self.fail(f"the driver stopped: {type(exc).__name__}: {exc}")
            raise

    def _watch_recovery(self, since: datetime, done: threading.Event) -> None:
        """Owns RUNNING <-> RECOVERING while Ray Train restarts worker groups inside ``fit()``."""
        while not done.wait(WATCH_SECONDS):
            try:
                failures, attempts = self.store.read_failures(self.job), self.store.read_attempts(self.job)
                with self._ended:
                    if self._final is not None:
                        return
                    state = self.store.read_state(self.job)
                    change = recovery_transition(state.status, failures, attempts, since=since)
                    if change is not None:
                        self.store.set_status(self.job, change.status, reason=change.reason)
                        kind = failures[-1].kind if failures else None
                        self.notifier.status_changed(change.status, change.reason, attempt=len(attempts), failure=kind)
            except OrchestratorError as exc:  # the store may be briefly unreachable: look again next time
                log.warning("recovery watch: %s", exc.message)
                continue
            if change is not None:
                self._log(change.log)

    def _run(self) -> JobState:
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch_recovery, args=(utc_now(), done), name=f"recovery-{self.job}", daemon=True
        )
        watcher.start()
        try:
            return self._train()
        finally:
            done.set()
            watcher.join(timeout=10)

    def _train(self) -> JobState:
        spec = self.record.spec
        keras_cache = self._prepare_data()
        scaling, failures = spec.scaling, spec.failures
        least = scaling.min_workers if scaling.elastic and scaling.min_workers is not None else scaling.workers
        waiting = check_resources(least, scaling.cpus_per_worker, scaling.gpus_per_worker)
        if waiting:
            self._log(waiting)
        self.store.set_status(self.job, JobStatus.RUNNING, started_at=utc_now(), reason=None)
        if self.tracking is not None:
            self.tracking.start()
        preemptions = "unlimited" if failures.max_preemptions < 0 else str(failures.max_preemptions)
        elastic = f" (elastic: down to {scaling.min_workers} after a lost node)" if scaling.elastic else ""
        self._log(
            f"starting {spec.scaling.workers} worker(s){elastic} for {spec.epochs} epochs; Ray Train may restart them "
            f"{failures.max_failures} time(s) after failures and {preemptions} after preemptions, each time "
            f"from the latest backup (every {spec.backup.every_epochs} epoch(s))"
        )
        config = WorkerConfig(job=self.job, store_url=self.store.url, keras_cache_url=keras_cache, run=self._run_name())
        self.store.clear_ending(self.job)
        try:
            self._trainer(config).fit()
        except Exception as exc:
            failure = describe_failure(exc, self.job)
            excerpt = getattr(failure, "excerpt", "")
            self._log(f"failed after {self._attempts()} attempt(s): {failure.message}\n{excerpt}".rstrip())
            raise failure from exc
        ending = self.store.read_ending(self.job)
        if ending is not None and ending.kind == "stopped":
            reason = f"{self.interrupted}: {ending.reason}" if self.interrupted else ending.reason
            self._log(f"stopped on request after attempt {self._attempts()}: {reason}")
            return self._end(JobStatus.STOPPED, reason)
        if ending is not None and ending.kind == "diverged":
            backups = self.store.backup_names(self.job)
            before = f"its latest backup, {backups[-1]}, is from before" if backups else "it has no backup yet"
            self._log(f"training diverged after attempt {self._attempts()}: {ending.reason}; {before}")
            return self._end(JobStatus.FAILED, ending.reason)
        if ending is not None and ending.kind == "early_stopped":
            self._log(f"{ending.reason}; ended after {ending.epoch}/{spec.epochs} epochs")
            return self._end(JobStatus.SUCCEEDED, ending.reason)
        self._log(f"trained all {spec.epochs} epochs in {self._attempts()} attempt(s)")
        return self._end(JobStatus.SUCCEEDED, None)

    def _attempts(self) -> int:
        return len(self.store.read_attempts(self.job))

    def fail(self, reason: str) -> JobState:
        """Record that the job ended with ``reason`` (also used when the user interrupts the driver)."""
        return self._end(JobStatus.FAILED, reason)

    def stop(self, reason: str, *, stopped_by: Literal["user", "signal"] = "user") -> JobState:
        """Record that the job was stopped (Ctrl+C, a person's stop, a signal): STOPPED, resumable from its latest
        backup; ``stopped_by`` says whether a retry (``run --or-resume``) may continue it (``signal``)."""
        return self._end(JobStatus.STOPPED, reason, stopped_by=stopped_by)

    def _end(self, status: JobStatus, reason: str | None, **changes: Any) -> JobState:
        """The first outcome recorded wins: after Ctrl+C, Ray's teardown also fails ``fit()``, and that later
        failure must not replace the reason the user caused."""
        with self._ended:
            if self._final is not None:
                log.info(
                    "job %s already ended as %s; not recording %s (%s)", self.job, self._final.status, status, reason
                )
                return self._final
            current = self.store.read_state(self.job).status
            if status is JobStatus.STOPPED and current in (JobStatus.RUNNING, JobStatus.RECOVERING):
                self.store.set_status(self.job, JobStatus.STOPPING, reason)  # a running job stops through STOPPING
            if status is JobStatus.SUCCEEDED and current is JobStatus.RECOVERING:
                self.store.set_status(self.job, JobStatus.RUNNING, "recovered just before finishing")
            self._final = self.store.set_status(
                self.job, status, reason, ended_at=utc_now(), attempt=self._attempts(), **changes
            )
        self.notifier.status_changed(status, reason, attempt=self._final.attempt)
        if self.tracking is not None:
            self.tracking.finish(status)
        self.notifier.flush()
        return self._final

    def _notifier(self) -> Notifier:
        """The job's notifications: its spec's ``notify``, else the config file's list on this machine."""
        fallback: list[str] = []
        if not self.record.spec.notify.urls:
            try:
                fallback = load_config().notify or []
            except OrchestratorError as exc:  # a broken config file costs the notifications, not the job
                self._log(f"notifications from the config file are off: {exc.message}")
        notifier = Notifier(self.job, self.record.spec.notify, fallback, on_log=self._log)
        if notifier.enabled:
            self._log(f"notifications on {', '.join(sorted(notifier.events))} to {len(notifier.urls)} destination(s)")
        return notifier

    def _tracking(self) -> TrackingThread | None:
        """The job's MLflow logging (its spec's ``tracking.mlflow``), or None: off, or it cannot run here."""
        config_uri = None
        try:
            config_uri = load_config().mlflow_tracking_uri
        except OrchestratorError as exc:
            self._log(f"MLflow: the config file's tracking URI is not read: {exc.message}")
        tracker, problem = tracker_for(self.store, self.job, config_uri)
        if problem is not None:
            self._log(f"MLflow logging is off: {problem}")
        if tracker is None:
            return None
        self._log(f"MLflow: logging to experiment '{tracker.experiment}' at {tracker.tracking_uri}")
        return TrackingThread(tracker, self._log)

    def _prepare_data(self) -> str | None:
        """Fail before any worker starts when the data cannot be had; download a keras dataset once.

        Returns the URL of the cached keras dataset, if the job uses one.
        """
        data = self.record.spec.data
        if isinstance(data, NpzData):
            check_npz_reachable(data)
        if isinstance(data, ImageFolderData):
            check_image_folder_reachable(data, loss=self.record.spec.loss)
        if not isinstance(data, KerasData):
            return None
        cache = self.store.dataset_cache_url(data.name)
        if prepare_keras_cache(data, cache):
            self._log(f"downloaded keras dataset {data.name} into the store cache {cache}")
        return cache

    def _trainer(self, config: WorkerConfig) -> Any:
        from ray.train.v2.api.config import FailureConfig, RunConfig, ScalingConfig

        TensorflowTrainer = tensorflow_trainer_class()

        scaling, failures = self.record.spec.scaling, self.record.spec.failures
        resources: dict[str, float] = {"CPU": scaling.cpus_per_worker}
        if scaling.gpus_per_worker:
            resources["GPU"] = scaling.gpus_per_worker
        scaling_config = ScalingConfig(
            num_workers=scaling.workers,
            use_gpu=scaling.gpus_per_worker > 0,
            resources_per_worker=resources,
            placement_strategy=scaling.placement.upper(),
        )
        if scaling.elastic:
            self._make_elastic(scaling_config)
        return TensorflowTrainer(
            train_loop_per_worker,
            train_loop_config=config.model_dump(),
            scaling_config=scaling_config,
            run_config=RunConfig(
                name=self._run_name(),
                storage_path=self._ray_storage_path(),
                failure_config=FailureConfig(
                    max_failures=failures.max_failures,
                    max_preemption_failures=failures.max_preemptions,
                    controller_failure_limit=CONTROLLER_FAILURE_LIMIT,
                ),
                # FastRestart is Ray Train's internal controller callback type, which RunConfig passes through
                callbacks=[FailureLog(self.store.url, self.job), FastRestart()],  # type: ignore[list-item]
                # Marks the training workers' processes, so the warm pool's setup hook preloads TensorFlow in
                # them only (and the pool prestarts processes with exactly this runtime env).
                worker_runtime_env={"env_vars": {TRAIN_WORKER_FLAG: "1"}},
            ),
        )

    def _run_name(self) -> str:
        return f"{self.job}-{self.record.id}"

    def _make_elastic(self, scaling_config: Any) -> None:
        """Ray Train's controller decides the group's size with ``ElasticScaling`` (``scaling.min_workers``)."""
        from orchestrator import elastic

        spec = self.record.spec
        problem = elastic.ray_train_scaling_problem()
        if problem is not None:
            self._log(f"elastic scaling off: {problem}; the job runs on {spec.scaling.workers} worker(s) only")
            return
        sizes = spec.scaling.sizes(spec.batch_size)
        run, store_url, job = self._run_name(), self.store.url, self.job
        elastic.install(
            scaling_config,
            lambda config: elastic.ElasticScaling(
                config,
                sizes=sizes,
                run=run,
                store_url=store_url,
                job=job,
            ),
        )
        self._log(f"elastic: {', '.join(map(str, sizes))} worker(s) allowed (those that split batch {spec.batch_size})")

    def _ray_storage_path(self) -> str:
        """Ray Train's own run folder: inside the job's folder for a local store, else a local scratch folder."""
        if self.store.is_local:
            return self.store.path(self.job, "ray")
        return str(Path.home() / ".orchestrator" / "ray")

    def _log(self, message: str) -> None:
        log.info(message)
        stamp = utc_now().strftime("%Y-%m-%d %H:%M:%S")
        self.store.append_log(self.job, "driver.log", f"{stamp} [driver] {message}\n")


class FailureLog(UserCallback):
    """Runs in Ray Train's controller: logs every worker-group failure with its reason, before any restart."""

    def __init__(self, store_url: str, job: str) -> None:
        self.store_url = store_url
        self.job = job

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        reasons = [
            f"rank {rank}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            for rank, e in sorted(worker_exceptions.items())
        ]
        store = JobStore(self.store_url)
        progress = store.read_progress(self.job)  # at most about a second old: where the failed attempt was
        record = FailureRecord(
            reasons=reasons,
            kind=failure_kind(store, self.job, list(worker_exceptions.values())),
            epoch=progress.epoch if progress else None,
            step=progress.step if progress else None,
            steps_per_epoch=progress.steps_per_epoch if progress else None,
        )
        store.append_failure(self.job, record)
        stamp = record.failed_at.strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} [controller] worker group failed ({'; '.join(reasons)}); restarting from the latest backup"
        store.append_log(self.job, "controller.log", line + " unless the failure budget is spent\n")


def failure_kind(store: JobStore, job: str, errors: list[BaseException]) -> FailureKind:
    """``recovery.failure_kind`` from the workers' errors and the failed attempt's backups in the store."""
    kinds: list[FailureKind] = [e.failure_kind if isinstance(e, OrchestratorError) else "failure" for e in errors]
    attempts = store.read_attempts(job)
    manifests = (store.read_manifest(job, name) for name in reversed(store.backup_names(job)))
    return recovery.failure_kind(kinds, attempts[-1].attempt if attempts else None, manifests)


def describe_failure(exc: BaseException, job: str) -> OrchestratorError:
    """Turn what Ray Train raised into one message plus the end of the failing worker's traceback.

    A worker's own OrchestratorError (bad data, a backup that does not fit) keeps its class and exit code.
    """
    worker_failures: dict[int, BaseException] = getattr(exc, "worker_failures", None) or {}
    hint = f"full log: orchestrator logs {job}"
    if not worker_failures:
        excerpt = _tail("".join(traceback.format_exception(exc)))
        return TrainingFailedError(f"training failed: {type(exc).__name__}: {exc}", excerpt=excerpt, hint=hint)
    rank, original = min(worker_failures.items())  # Ray Train hands over each worker's own exception
    excerpt = _tail(str(exc))  # its message holds every failing rank's traceback snippet
    if isinstance(original, OrchestratorError):
        error = copy.copy(original)
        error.message = f"rank {rank}: {original.message}"
        error.args = (error.message,)
        error.excerpt = original.excerpt or excerpt
        error.hint = f"{original.hint}; {hint}" if original.hint else hint
        return error
    return TrainingFailedError(f"rank {rank} raised {type(original).__name__}: {original}", excerpt=excerpt, hint=hint)


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return os.linesep.join(lines[-EXCERPT_LINES:])
