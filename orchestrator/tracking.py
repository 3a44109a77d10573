"""Experiment tracking: a job's parameters, epochs and models in MLflow (the ``mlflow`` extra; docs/tracking.md).

One MLflow run per branch of a job, its id kept in the store (``tracking.json``): every attempt, every
``orchestrator resume`` continues it. The driver, which watches the job across attempts, syncs from the store's
records (``MlflowTracker.sync``) every few seconds on a background thread and once more at the job's end; the
``mlflow-sync`` command does the same for a job no driver runs. Each epoch's metrics are logged once, the record the
model descends from: an epoch counts as settled once a backup after it exists (a restart can no longer replay
it), or once the job SUCCEEDED. A failure to log is written in driver.log, never raised into the job (the rule of
``notify``). MLflow is imported only when a run is logged: ``import orchestrator`` does not pay for it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.records import EpochRecord, JobRecord, TrackedRun, TrackingRecord, utc_now
from orchestrator.spec import ENV_URL, MlflowSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore

log = logging.getLogger(__name__)

SYNC_SECONDS = 5.0  # how often the driver logs the epochs settled since its last look
FINISH_TIMEOUT_S = 120.0  # how long the driver waits, at the job's end, for the last sync (models included)
RUN_STATUS = {JobStatus.SUCCEEDED: "FINISHED", JobStatus.FAILED: "FAILED", JobStatus.STOPPED: "KILLED"}
MODELS = {"final": (("model", "final.keras"), "model"), "best": (("best", "model.keras"), "best")}
BATCH = 500  # metrics per log_batch call (MLflow takes at most 1000)
INSTALL_HINT = "pip install 'spot-orchestrator[mlflow]'"


def default_uri() -> str:
    return f"sqlite:///{Path.home() / '.orchestrator' / 'mlflow.db'}"


def resolve_uri(
    spec: MlflowSpec, config_uri: str | None = None, environ: dict[str, str] | None = None
) -> tuple[str | None, str | None]:
    """The tracking URI to log to, and why there is none (an ``env:NAME`` whose variable is not set)."""
    env = os.environ if environ is None else environ
    uri = spec.tracking_uri
    if uri is not None and ENV_URL.match(uri):
        name = uri.removeprefix("env:")
        value = env.get(name, "").strip()
        return (value, None) if value else (None, f"{uri}: the environment variable {name} is not set")
    return uri or env.get("MLFLOW_TRACKING_URI") or config_uri or default_uri(), None


def params_of(record: JobRecord) -> dict[str, str]:
    """The spec's main fields as MLflow parameters: the model, data, optimizer and scaling sections flattened
    (``optimizer.learning_rate``), and the top-level settings (``batch_size``, ``epochs``, ``precision``...)."""
    spec = record.spec.model_dump(mode="json", exclude_none=True)
    params: dict[str, str] = {"job": record.name, "job_id": record.id}
    for key, value in spec.items():
        if key in ("model", "data", "optimizer", "scaling"):
            params.update({f"{key}.{k}": _text(v) for k, v in value.items()})
        elif not isinstance(value, dict):
            params[key] = _text(value)
    params["backup.every_epochs"] = str(record.spec.backup.every_epochs)
    return params


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def metrics_of(record: EpochRecord) -> dict[str, float]:
    """An epoch's metrics as logged: Keras' (``loss``, ``val_accuracy``...), its LR and its duration."""
    metrics = dict(record.metrics)
    metrics["learning_rate"] = record.learning_rate
    if record.end_learning_rate is not None:
        metrics["end_learning_rate"] = record.end_learning_rate
    metrics["epoch_seconds"] = record.seconds
    return metrics


def settled(history: list[EpochRecord], backup_epoch: int | None, status: JobStatus) -> int:
    """How many epochs (from the first) can no longer be trained again: those before the latest backup (a restart
    resumes from it), each only once its record is in ``history``; all of them once the job SUCCEEDED."""
    trained = history[-1].epoch + 1 if history else 0
    if status is JobStatus.SUCCEEDED:
        return trained
    return min(backup_epoch or 0, trained)


class SyncOutput(BaseModel):
    """What ``orchestrator mlflow-sync`` did (also its ``--json``)."""

    model_config = ConfigDict(extra="forbid")

    job: str
    tracking_uri: str
    experiment: str
    run_id: str
    branch: int
    parent_run_id: str | None
    epochs_logged: list[int]
    epochs_logged_again: list[int] = []  # trained again since they were logged: their newer values
    epochs_in_run: int
    models_logged: list[str]
    run_status: str

    def render(self) -> str:
        epochs = f"{len(self.epochs_logged)} new epoch(s)" if self.epochs_logged else "no new epoch"
        if self.epochs_logged_again:
            again = ", ".join(str(e + 1) for e in self.epochs_logged_again)
            epochs += f" (and epoch(s) {again} again, trained again after a restore from an older backup)"
        models = f", models: {', '.join(self.models_logged)}" if self.models_logged else ""
        return (
            f"job '{self.job}': MLflow run {self.run_id} ({self.run_status}) in experiment '{self.experiment}' at "
            f"{self.tracking_uri}: {epochs} logged, {self.epochs_in_run} in the run{models}"
        )


class MlflowTracker:
    """Logs one job to MLflow from the store's records; ``sync`` may be called any number of times."""

    def __init__(self, store: JobStore, job: str, tracking_uri: str, experiment: str, client: Any = None) -> None:
        self.store, self.job = store, job
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self._client = client
        self._checked: set[str] = set()  # runs whose logged epochs were checked against MLflow by this process

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from mlflow.tracking import MlflowClient
            except ImportError:
                raise UsageError("MLflow is not installed", hint=INSTALL_HINT) from None
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up notes: not the user's news
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def sync(self, status: JobStatus | None = None) -> SyncOutput:
        """Log what is settled; ``status``: the job's final status at its end (models, run status), else None."""
        record = self.store.load_job(self.job)
        state = self._tracking()
        branch = len(self.store.read_branches(self.job))
        state, run = self._run(state, record, branch)
        done = run.epochs_logged
        if run.run_id not in self._checked:
            done = max(done, self._epochs_in_mlflow(run.run_id))
            self.client.update_run(run.run_id, status="RUNNING")
            self._checked.add(run.run_id)
        history = self.store.read_history(self.job)
        backups = self.store.backup_names(self.job)
        backup_epoch = self.store.read_manifest(self.job, backups[-1]).epoch if backups else None
        bound = settled(history, backup_epoch, status or JobStatus.RUNNING)
        new = [r for r in history if done <= r.epoch < bound]
        # Trained again after they were logged: a restore from an older backup (the newest was damaged) retrains
        # settled epochs. MLflow keeps every value; the newer one, logged at the same step, is the run's latest.
        since = run.logged_until or max((r.ended_at for r in history if r.epoch < done), default=None)
        again = [r for r in history if r.epoch < min(done, bound) and since is not None and r.ended_at > since]
        self._log_epochs(run.run_id, again + new)
        models: list[str] = []
        if status is not None:
            models = self._log_models(run.run_id, status)
            self.client.set_terminated(run.run_id, status=RUN_STATUS.get(status, "FAILED"))
        ends = [r.ended_at for r in again + new] + ([since] if since is not None else [])
        run = run.model_copy(
            update={
                "epochs_logged": max(done, bound),
                "models_logged": sorted({*run.models_logged, *models}),
                "logged_until": max(ends) if ends else None,
            }
        )
        state = _with_run(state, run)
        self.store.write_tracking(self.job, state)
        return SyncOutput(
            job=self.job,
            tracking_uri=state.tracking_uri,
            experiment=self.experiment,
            run_id=run.run_id,
            branch=branch,
            parent_run_id=run.parent_run_id,
            epochs_logged=[r.epoch for r in new],
            epochs_logged_again=[r.epoch for r in again],
            epochs_in_run=run.epochs_logged,
            models_logged=models,
            run_status=RUN_STATUS.get(status, "FAILED") if status is not None else "RUNNING",
        )

    def _tracking(self) -> TrackingRecord:
        state = self.store.read_tracking(self.job)
        if state is not None:
            if state.tracking_uri != self.tracking_uri:  # the runs live where they were made
                log.warning("job %s: logging to its runs' tracking URI %s", self.job, state.tracking_uri)
                self.tracking_uri, self._client = state.tracking_uri, None
            return state
        client = self.client
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            experiment_id = client.create_experiment(self.experiment, artifact_location=self._artifact_location())
        state = TrackingRecord(tracking_uri=self.tracking_uri, experiment_id=experiment_id)
        self.store.write_tracking(self.job, state)
        return state

    def _artifact_location(self) -> str | None:
        """Beside a SQLite database (MLflow's own default, ``./mlruns``, would follow the driver's working folder)."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return None
        return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()

    def _run(self, state: TrackingRecord, record: JobRecord, branch: int) -> tuple[TrackingRecord, TrackedRun]:
        """The branch's run, created (with the job's parameters and spec) the first time it is needed."""
        for run in state.runs:
            if run.branch == branch:
                return state, run
        earlier = [r for r in state.runs if r.branch < branch]
        parent = max(earlier, key=lambda r: r.branch).run_id if earlier else None
        tags = {"orchestrator.job": self.job, "orchestrator.job_id": record.id, "orchestrator.branch": str(branch)}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
            fork = self.store.read_branches(self.job)[branch - 1]
            tags["orchestrator.from_epoch"] = str(fork.from_epoch)
        name = self.job if branch == 0 else f"{self.job}-branch{branch}"
        created = self.client.create_run(state.experiment_id, run_name=name, tags=tags)
        run = TrackedRun(branch=branch, run_id=created.info.run_id, parent_run_id=parent)
        state = _with_run(state, run)
        self.store.write_tracking(self.job, state)  # the run id is kept before anything else is logged
        self._log_params(run.run_id, params_of(record))
        self.client.log_dict(run.run_id, record.spec.model_dump(mode="json"), "job/spec.json")
        return state, run

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def _epochs_in_mlflow(self, run_id: str) -> int:
        """The epochs the run already holds (a process that logged them may have ended before writing it down)."""
        steps = [m.step for m in self.client.get_metric_history(run_id, "learning_rate")]
        return max(steps) + 1 if steps else 0

    def _log_epochs(self, run_id: str, records: Iterable[EpochRecord]) -> None:
        from mlflow.entities import Metric

        metrics = [
            Metric(key, value if math.isfinite(value) else float("nan"), int(r.ended_at.timestamp() * 1000), r.epoch)
            for r in records
            for key, value in metrics_of(r).items()
        ]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(run_id, metrics=metrics[start : start + BATCH])

    def _log_models(self, run_id: str, status: JobStatus) -> list[str]:
        """The final model (a SUCCEEDED job) and the best one, where the store has them, as artifacts."""
        logged = []
        with tempfile.TemporaryDirectory(prefix="orchestrator-mlflow-") as scratch:
            for which, (parts, folder) in MODELS.items():
                if which == "final" and status is not JobStatus.SUCCEEDED:
                    continue
                if not self.store.fs.exists(self.store.path(self.job, *parts)):
                    continue
                local = os.path.join(scratch, which, parts[-1])
                os.makedirs(os.path.dirname(local))
                self.store.download_file(self.job, local, *parts)
                self.client.log_artifact(run_id, local, artifact_path=folder)
                logged.append(which)
        return logged


def _with_run(state: TrackingRecord, run: TrackedRun) -> TrackingRecord:
    runs = sorted([*(r for r in state.runs if r.branch != run.branch), run], key=lambda r: r.branch)
    return state.model_copy(update={"runs": runs, "updated_at": utc_now()})


def tracker_for(store: JobStore, job: str, config_uri: str | None = None) -> tuple[MlflowTracker | None, str | None]:
    """The job's tracker from its spec's ``tracking.mlflow`` (None when off), and why it is off when it cannot run."""
    spec = store.load_job(job).spec.tracking.mlflow
    if spec is None:
        return None, None
    uri, problem = resolve_uri(spec, config_uri)
    if uri is None:
        return None, problem
    if importlib.util.find_spec("mlflow") is None:
        return None, f"MLflow is not installed ({INSTALL_HINT})"
    return MlflowTracker(store, job, uri, spec.experiment), None


def sync_job(
    store: JobStore, job: str, *, tracking_uri: str | None = None, experiment: str | None = None
) -> SyncOutput:
    """``orchestrator mlflow-sync``: log a job no driver runs (a finished job, one whose driver was lost, or one
    that ran without tracking) to its MLflow run, the same way its driver does.

    Raises:
        UsageError: a driver is running the job (it logs by itself), or there is nowhere to log to.
    """
    from orchestrator import lifecycle
    from orchestrator.user_config import load_config

    record = store.load_job(job)
    state = store.read_state(job)
    if state.status.is_active() and lifecycle.driver_gone(store.read_driver(job)) is None:
        raise UsageError(
            f"job '{job}' is {state.status}: its driver logs it to MLflow while it runs",
            hint=f"run it again once the job has ended (see: orchestrator status {job})",
        )
    spec = record.spec.tracking.mlflow or MlflowSpec()
    if tracking_uri is not None:
        spec = spec.model_copy(update={"tracking_uri": tracking_uri})
    uri, problem = resolve_uri(spec, load_config().mlflow_tracking_uri)
    if uri is None:
        raise UsageError(f"job '{job}': tracking.mlflow.{problem}", hint="set it, or give --tracking-uri")
    if importlib.util.find_spec("mlflow") is None:
        raise UsageError("MLflow is not installed", hint=INSTALL_HINT)
    tracker = MlflowTracker(store, job, uri, experiment or spec.experiment)
    return tracker.sync(state.status if state.status in RUN_STATUS else None)


class TrackingThread:
    """The driver's side: ``sync`` every ``SYNC_SECONDS`` aside from training, and once more at the end (with a
    deadline). Every failure is logged (each distinct one once in a row), never raised."""

    def __init__(self, tracker: MlflowTracker, on_log: Callable[[str], None], interval_s: float = SYNC_SECONDS) -> None:
        self.tracker, self._log, self.interval_s = tracker, on_log, interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one sync at a time
        self._thread: threading.Thread | None = None
        self._last_problem: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-{self.tracker.job}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self._sync(None)
        while not self._stop.wait(self.interval_s):
            self._sync(None)

    def _sync(self, status: JobStatus | None) -> SyncOutput | None:
        with self._lock:
            try:
                output = self.tracker.sync(status)
            except Exception as exc:  # a tracking server's failure is never the job's
                problem = exc.message if isinstance(exc, OrchestratorError) else f"{type(exc).__name__}: {exc}"
                if problem != self._last_problem:
                    self._log(f"MLflow: not logged ({problem}); trying again later")
                self._last_problem = problem
                return None
        self._last_problem = None
        if output.epochs_logged_again and status is None:  # at the end, finish() says it with the rest
            self._log(f"MLflow: {output.render()}")
        return output

    def finish(self, status: JobStatus, timeout_s: float = FINISH_TIMEOUT_S) -> None:
        """Stop the periodic sync, then log the end (settled epochs, models, the run's status), waiting at most
        ``timeout_s``: the driver may exit next."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        done: list[SyncOutput | None] = []
        final = threading.Thread(target=lambda: done.append(self._sync(status)), daemon=True)
        final.start()
        final.join(timeout=timeout_s)
        if final.is_alive():
            self._log(f"MLflow: the job's end not logged within {timeout_s:.0f} s; orchestrator mlflow-sync catches up")
        elif done and done[0] is not None:
            self._log(f"MLflow: {done[0].render()}")
