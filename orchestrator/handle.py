"""``Job``: the Python API's handle to one job in a store (``orchestrator.job(name)``, ``run``, ``submit``).

Each method reads or writes the store, as the command of the same name does (the command calls it): a handle
works the same for a job this process runs, one another process runs, and one on a cluster.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UsageError
from orchestrator.status import JobStatus
from orchestrator.store import JobStore, default_store_url, validate_job_name
from orchestrator.user_config import setting

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

    from orchestrator.records import JobState
    from orchestrator.views import (
        CommandOutput,
        ExportOutput,
        HistoryOutput,
        LiveSnapshot,
        RunOutput,
        SnapshotsOutput,
        StatusOutput,
        SubmitOutput,
    )

StoreLike = str | JobStore | None
OnUpdate = Callable[["LiveSnapshot"], None]
WAIT_POLL_S = 1.0
RECORDED_WAIT_S = 120.0  # wait=False returns once the job is recorded (or its thread ended), at most this long


def open_store(store: StoreLike = None) -> JobStore:
    """The store a job lives in: a ``JobStore``, a URL or folder, else ``$ORCHESTRATOR_STORE``, else ``store`` in
    the config file, else ``~/.orchestrator/store``; checked reachable (a gs:// store that cannot be reached is
    one error in seconds, not minutes of retries)."""
    if isinstance(store, JobStore):
        return store
    job_store = JobStore(default_store_url(store))
    job_store.check_reachable()
    return job_store


def ray_address(address: str | None, key: str) -> str | None:
    """The argument, else ``$RAY_ADDRESS``, else the config file's ``key`` (as the command's options resolve it)."""
    return setting(address or os.environ.get("RAY_ADDRESS") or None, key)


class Job:
    """A job in a store: its status, history, plot, and the commands a person gives it.

    Get one with `orchestrator.job(name, store)`, `orchestrator.run(...)` or `orchestrator.submit(...)`. The
    methods return the same records the command prints with `--json` (pydantic models), except `history`
    (a pandas DataFrame) and `plot` (a matplotlib Figure).

    Attributes:
        name: the job's name.
        store: its `JobStore`.
        result: what a `run` or `resume` from this handle ended with (`RunOutput`), once it ended.
        submission: what `submit` returned (`SubmitOutput`), for a submitted job.

    Example:
        >>> job = orchestrator.job("quickstart")
        >>> job.status().state.status
        <JobStatus.RUNNING: 'RUNNING'>
        >>> job.set_lr(3e-4, now=True)
    """

    def __init__(self, name: str, store: StoreLike = None) -> None:
        self.name = validate_job_name(name)
        self.store = open_store(store)
        self.result: RunOutput | None = None
        self.submission: SubmitOutput | None = None
        self._thread: threading.Thread | None = None
        self._outcome: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Job({self.name!r}, store={self.store.url!r})"

    @property
    def running_here(self) -> bool:
        """True while this process trains the job in the background (`run(..., wait=False)`)."""
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> StatusOutput:
        """The job's status, position, attempts, failures, backups, commands and accounting (`orchestrator status`).

        Returns:
            A `StatusOutput`: `.state.status` is the `JobStatus`, `.state.reason` why it is there.

        Raises:
            JobNotFoundError: the store has no such job.
        """
        return status_of(self.store, self.name)

    def history(self, *, superseded: bool = False) -> pandas.DataFrame:
        """One row per finished epoch, as `orchestrator history` shows them.

        Args:
            superseded: also the epochs of branches a later `resume(from_epoch=...)` replaced (column
                `superseded` says which).

        Returns:
            A pandas DataFrame with columns `epoch` (epochs done at its end, from 1), `learning_rate` (at its
            first step), `end_learning_rate` (at its last: differs after a `set_lr(now=True)` inside it), each
            metric (`loss`, `accuracy`, `val_loss`, ...), `seconds`, `attempt`, `branch`, `segment`, `phase`,
            `workers`, `ended_at`.

        Raises:
            UsageError: pandas is not installed (`pip install 'spot-orchestrator[notebook]'`).

        Example:
            >>> job.history()[["epoch", "learning_rate", "val_accuracy"]]
        """
        try:
            import pandas
        except ImportError:
            raise UsageError(
                "Job.history() returns a pandas DataFrame, and pandas is not installed",
                hint="pip install 'spot-orchestrator[notebook]' (or pip install pandas)",
            ) from None
        from orchestrator.store import superseded as is_superseded

        output = history_of(self.store, self.name)
        records = self.store.read_history_lines(self.name) if superseded else output.epochs
        branches = self.store.read_branches(self.name)
        rows = [
            {
                "epoch": r.epoch + 1,
                "learning_rate": r.learning_rate,
                "end_learning_rate": r.end_learning_rate if r.end_learning_rate is not None else r.learning_rate,
                **r.metrics,
                "seconds": r.seconds,
                "attempt": r.attempt,
                "branch": r.branch,
                "segment": r.segment,
                "phase": r.phase,
                "workers": output.workers.get(r.attempt),
                "ended_at": r.ended_at,
                **({"superseded": is_superseded(r, branches)} if superseded else {}),
            }
            for r in records
        ]
        return pandas.DataFrame(rows)

    def plot(self, metrics: Iterable[str] | None = None, *, path: str | os.PathLike[str] | None = None) -> Figure:
        """The whole run as `orchestrator plot` draws it: curves, LR on a second axis, markers at LR changes,
        stops, restarts and branches. A notebook shows the returned Figure inline.

        Args:
            metrics: the metrics to draw (default: loss and accuracy).
            path: also write it there as a PNG.

        Returns:
            A matplotlib `Figure` (not registered with pyplot: nothing to close).

        Example:
            >>> job.plot(["loss"], path="run.png")
        """
        from orchestrator import plot
        from orchestrator.commands import write_figure
        from orchestrator.run_plot import run_plot_data

        self.store.load_job(self.name)
        figure = plot.figure(run_plot_data(self.store, self.name, list(metrics) if metrics else None))
        if path is not None:
            write_figure(str(path), "plot path", lambda target: figure.savefig(target, format="png"))
        return figure

    def set_lr(self, lr: float, *, now: bool = False, at_epoch: int | None = None) -> CommandOutput:
        """Change the learning rate of the running job, from any process (`orchestrator set-lr`).

        Args:
            lr: the new learning rate (a positive number).
            now: at the next step boundary (within about a second) instead of the next epoch boundary.
            at_epoch: once this many epochs are done.

        Returns:
            The recorded command (`CommandOutput`); `status()` and `history()` show when it applied.

        Raises:
            UsageError: a bad learning rate or moment, or a job that has finished.

        Example:
            >>> orchestrator.job("quickstart").set_lr(3e-4, now=True)
        """
        from orchestrator import commands

        return commands.set_lr(self.store, self.name, lr, now=now, at_epoch=at_epoch)

    def stop(self, *, at_epoch_end: bool = False) -> CommandOutput:
        """Stop the job: it backs up at the next step (or the epoch's end) and ends STOPPED, resumable.

        Raises:
            UsageError: the job is not running, or already has a stop pending.
        """
        from orchestrator import commands

        return commands.request_stop(self.store, self.name, at_epoch_end=at_epoch_end)

    def resume(
        self,
        lr: float | None = None,
        *,
        from_epoch: int | None = None,
        model_fn: Callable[..., Any] | None = None,
        address: str | None = None,
        wait: bool = True,
        on_update: OnUpdate | None = None,
    ) -> Job:
        """Continue a STOPPED or FAILED job from its latest backup, here (`orchestrator resume`).

        Args:
            lr: continue with this learning rate (checked as `set_lr` checks it).
            from_epoch: restart from the snapshot after this many epochs (a new branch; later epochs become
                superseded); works on a SUCCEEDED job too.
            model_fn: the Python function the job's model was built with, if it was (`run(model_fn=...)`): a
                resume must rebuild the same model, and this process may not be the one that started it.
            address, wait, on_update: as `orchestrator.run`'s.

        Returns:
            This `Job`; with `wait=True`, its `result` is set.

        Raises:
            UsageError: the job is running or SUCCEEDED (without `from_epoch`), has no such snapshot, its model
                needs `model_fn` and none was given, or `lr` is not a positive number.

        Example:
            >>> job.resume(lr=1e-4)
        """
        from orchestrator import runner

        if from_epoch is not None and (isinstance(from_epoch, bool) or from_epoch < 1):
            raise UsageError(f"--from-epoch: got {from_epoch}, must be the number of epochs done at a snapshot (>= 1)")
        ray_at = ray_address(address, "address")

        def drive(on_update: OnUpdate) -> RunOutput:
            return runner.resume_job(
                self.name,
                store=self.store,
                address=ray_at,
                learning_rate=lr,
                from_epoch=from_epoch,
                on_update=on_update,
                model_fn=model_fn,
            )

        if wait:
            self.result = drive(on_update or _ignore)
            return self
        runner.attach_to_ray(ray_at)
        self._start(lambda: drive(on_update or _ignore), known=True)
        return self

    def wait(self, timeout: float | None = None) -> RunOutput:
        """Wait until the job ends (SUCCEEDED, STOPPED or FAILED) and return what it ended with.

        For a job this process trains in the background, waits for that thread (and raises what it raised);
        for any other, watches the store.

        Args:
            timeout: seconds to wait at most (default: no limit).

        Returns:
            A `RunOutput`: status, epochs done, final metrics, the model's URL.

        Raises:
            TimeoutError: it had not ended within `timeout`.
        """
        from orchestrator.runner import result_of

        started = time.monotonic()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"job '{self.name}' is still running after {timeout:g} s")
            error = self._outcome.get("error")
            if isinstance(error, BaseException):
                raise error
            self.result = self._outcome["result"]
            return self._outcome["result"]  # type: ignore[no-any-return]
        while not self.store.read_state(self.name).status.is_terminal():
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(
                    f"job '{self.name}' is still {self.store.read_state(self.name).status} after {timeout:g} s"
                )
            time.sleep(WAIT_POLL_S)
        return result_of(self.store, self.name, time.monotonic() - started)

    def logs(self, sources: Iterable[str] | None = None, *, tail: int | None = None) -> dict[str, str]:
        """The job's logs from the store (`orchestrator logs`): the driver's, the controller's, each worker's.

        Args:
            sources: only these: `driver`, `controller`, `worker` (every rank), `worker-N` or `N`.
            tail: only the last `tail` lines of each.

        Returns:
            Log name (`driver.log`, `worker-0.log`, ...) to its text.
        """
        from orchestrator import jobs

        self.store.load_job(self.name)
        return jobs.read_logs(self.store, self.name, jobs.parse_sources(list(sources or [])), tail).logs

    def export(self, path: str | os.PathLike[str], epoch: int | None = None) -> ExportOutput:
        """Write the job's model (final, or the snapshot after `epoch` epochs) as a `.keras` file or URL,
        loadable with `tf_keras.models.load_model` (`orchestrator export`).

        Raises:
            UsageError: no final model yet, no such snapshot, or a path that does not end with `.keras`.
            CorruptBackupError: the snapshot is damaged.
        """
        from orchestrator import commands

        return commands.export_model(self.store, self.name, epoch, os.fspath(path))

    def snapshots(self) -> SnapshotsOutput:
        """The job's snapshots (`backup.snapshot_every_epochs`), which `export(epoch=)` and `resume(from_epoch=)`
        use (`orchestrator snapshots`)."""
        from orchestrator import commands

        return commands.snapshots(self.store, self.name)

    def _start(self, drive: Callable[[], RunOutput], *, known: bool) -> None:
        """Train in a background thread; return once the job's record shows this run (or the thread ended)."""
        before = self.store.read_state(self.name) if known else None
        ended = threading.Event()

        def target() -> None:
            try:
                self._outcome["result"] = drive()
                self.result = self._outcome["result"]
            except BaseException as exc:  # handed to wait()
                self._outcome["error"] = exc
            finally:
                ended.set()

        self._thread = threading.Thread(target=target, name=f"orchestrator-{self.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + RECORDED_WAIT_S
        while not ended.wait(0.1) and time.monotonic() < deadline:
            if _recorded(self.store, self.name, before):
                return
        if ended.is_set() and isinstance(self._outcome.get("error"), BaseException):
            raise self._outcome["error"]


def _recorded(store: JobStore, name: str, before: JobState | None) -> bool:
    if name not in store.job_names():
        return False
    return before is None or store.read_state(name) != before


def _ignore(snapshot: LiveSnapshot) -> None:
    return None


def status_of(store: JobStore, name: str) -> StatusOutput:
    """What ``orchestrator status`` shows: the job's record, state, progress, attempts, backups and accounting."""
    from orchestrator.commands import command_rows
    from orchestrator.cost import job_cost
    from orchestrator.lifecycle import driver_gone
    from orchestrator.recovery import run_accounting
    from orchestrator.user_config import prices
    from orchestrator.views import StatusOutput, describe_spec

    record = store.load_job(validate_job_name(name))
    history, lines = store.read_history(name), store.read_history_lines(name)
    attempts, failures = store.read_attempts(name), store.read_failures(name)
    checkpoints, branches = store.read_backup_records(name), store.read_branches(name)
    state = store.read_state(name)
    backups = store.backup_names(name)
    damaged = {b: why for b in backups if (why := store.backup_problem(name, b)) is not None}  # sizes: cheap
    progress = store.read_progress(name)
    ended = progress if state.status in (JobStatus.STOPPED, JobStatus.FAILED) else None
    return StatusOutput(
        name=name,
        id=record.id,
        store=store.url,
        summary=describe_spec(record.spec),
        state=state,
        progress=progress,
        epochs_done=len({r.epoch for r in history}),
        epochs=record.spec.epochs,
        attempts=attempts,
        failures=failures,
        backups=backups,
        damaged_backups=damaged,
        commands=command_rows(store, name),
        accounting=run_accounting(
            attempts,
            failures,
            history,
            lines,
            state.ended_at,
            checkpoints,
            branches=branches,
            ended_without_backup=ended,
        ),
        checkpoints=checkpoints,
        resizes=store.read_resizes(name),
        driver_gone=driver_gone(store.read_driver(name)) if state.status.is_active() else None,
        cost=job_cost(
            prices(record.spec.cost),
            record.spec.scaling,
            attempts,
            failures,
            history,
            lines,
            ended_at=state.ended_at,
            backups=checkpoints,
            branches=branches,
            progress=progress,
            ended_without_backup=ended,
        ),
    )


def history_of(store: JobStore, name: str) -> HistoryOutput:
    """What ``orchestrator history`` shows: the live run's epochs, each attempt's workers, the resizes."""
    from orchestrator.views import HistoryOutput

    store.load_job(validate_job_name(name))
    workers = {a.attempt: len(a.workers) for a in store.read_attempts(name) if a.workers}
    return HistoryOutput(name=name, epochs=store.read_history(name), workers=workers, resizes=store.read_resizes(name))
