"""How a foreground run stops: Ctrl+C (a stop with a backup where workers train, a second Ctrl+C at once), a
terminating signal after a person's stop, and the stops a resume voids."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from orchestrator.errors import InterruptedByUserError, OrchestratorError
from orchestrator.records import Command, CommandAck, JobState
from orchestrator.recovery import steps_after
from orchestrator.spec import JobSpec
from orchestrator.status import JobStatus
from orchestrator.store import JobStore

if TYPE_CHECKING:
    from orchestrator.driver import JobDriver

POLL_SECONDS = 0.5
log = logging.getLogger("orchestrator.runner")  # the CLI prints its warnings


def pending_stop(store: JobStore, name: str) -> Command | None:
    """The stop a person asked for and the workers have not applied yet, if any (``stop``, ``cancel``)."""
    from orchestrator.commands import pending_commands

    try:
        return next((c for c in pending_commands(store, name) if c.kind == "stop"), None)
    except OrchestratorError:
        return None


def void_pending_stops(store: JobStore, name: str, ended: JobState) -> None:
    """A stop still pending when the job ended otherwise (a second Ctrl+C, a failure) must not stop the resumed
    job at its first step: resuming is the later wish. No worker runs now, so no rank 0 acknowledges meanwhile."""
    from orchestrator.commands import pending_commands

    progress = store.read_progress(name)
    for command in pending_commands(store, name):
        if command.kind != "stop":
            continue
        why = f"the job had ended {ended.status} before it took effect; resumed since"
        store.write_ack(
            name,
            CommandAck(
                seq=command.seq,
                epoch=progress.epoch if progress else 0,
                step=progress.step if progress else 0,
                attempt=progress.attempt if progress else 0,
                void=why,
            ),
        )
        store.append_log(name, "driver.log", f"stop #{command.seq} not applied: {why}\n")


def interrupted(
    store: JobStore,
    name: str,
    spec: JobSpec,
    driver: JobDriver,
    ended: threading.Event,
    report: Callable[[], None],
) -> NoReturn:
    """Ctrl+C: a stop with a backup where workers are training (a second Ctrl+C stops at once, without it);
    ``report`` shows the job as it stands while the workers back up.

    The first Ctrl+C asks the workers to stop through the job's commands, as ``orchestrator stop`` does: they
    back up at the next step they agree at and end STOPPED, so nothing trained is lost. The wait is bounded
    (``CTRL_C_BACKUP_WAIT_S``); a second Ctrl+C, or a job with no worker training (still starting), ends it now,
    and the steps since the latest backup are lost: the message says how many, and ``status`` counts them.
    From the first Ctrl+C on, further ones only set a flag, so that no later one interrupts the shutdown.
    """
    again = threading.Event()
    previous = catch_sigint(again)
    try:
        reason = "interrupted by the user (Ctrl+C)"
        driver.interrupted = reason
        stop = stop_with_backup(store, name)
        if stop is not None:
            log.warning(
                "Ctrl+C: backing up, then stopping (stop #%d); Ctrl+C again stops at once, without it", stop.seq
            )
            deadline = time.monotonic() + CTRL_C_BACKUP_WAIT_S
            while not ended.is_set() and not again.is_set() and time.monotonic() < deadline:
                report()
                again.wait(POLL_SECONDS)  # returns at once on a second Ctrl+C
            if again.is_set() and not ended.is_set():
                reason += "; Ctrl+C again: stopped without a backup"
            elif not ended.is_set():
                reason += f"; no backup within {CTRL_C_BACKUP_WAIT_S:.0f} s: stopped without one"
        state = driver.stop(reason)  # the first outcome recorded wins: a stop that backed up keeps its reason
        end_training(ended)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    done = len({record.epoch for record in store.read_history(name)})
    raise InterruptedByUserError(
        f"interrupted: job '{name}' is {state.status} after {done}/{spec.epochs} epochs; {what_was_kept(store, name)}",
        hint=f"continue it with: orchestrator resume {name}",
    ) from None


def catch_sigint(flag: threading.Event) -> Any:
    """Make SIGINT set ``flag`` instead of raising; returns the handler to put back (``None``: not the main
    thread, where Python lets no handler be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, lambda signum, frame: flag.set())


CTRL_C_BACKUP_WAIT_S = 60.0


def stop_with_backup(store: JobStore, name: str) -> Command | None:
    """The stop command a first Ctrl+C writes, or ``None`` when no worker trains now (nothing to back up)."""
    from orchestrator.commands import request_stop

    state, progress = store.read_state(name), store.read_progress(name)
    if state.status is not JobStatus.RUNNING or progress is None or state.started_at is None:
        return None
    if progress.updated_at < state.started_at:  # the last run's position: this one's workers are still starting
        return None
    try:
        return request_stop(store, name, at_epoch_end=False, issued_by="Ctrl+C").command
    except OrchestratorError as exc:  # a stop already pending: it backs up too
        log.warning("Ctrl+C: %s", exc.message)
        return None


def what_was_kept(store: JobStore, name: str) -> str:
    """Where a resume continues from, and the steps it trains again (since the latest backup)."""
    records, progress = store.read_backup_records(name), store.read_progress(name)
    if not records:
        return "it has no backup yet: a resume starts at the first epoch"
    newest = records[-1]
    at = f"epoch {newest.epoch + 1}, step {newest.step}" if newest.step else f"after epoch {newest.epoch}"
    lost = steps_after(progress, newest.epoch, newest.step) if progress is not None else 0
    kept = f"its latest backup is {newest.name} ({at})"
    return kept + (f"; the {lost} step(s) trained since it are lost" if lost else "; nothing trained was lost")


def end_training(ended: threading.Event) -> None:
    """End the Ray Train run this process drives while the interpreter is whole, once the job is STOPPED.

    Left to the interpreter's exit, the driver thread is still inside ``fit()`` when Ray's exit handler tears
    Ray down; that once crashed the process (SIGSEGV, exit -11 instead of 130) after the job was recorded
    STOPPED (CI, test_interrupt). The driver records nothing more: the first outcome recorded wins.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ended.wait(timeout=30)
