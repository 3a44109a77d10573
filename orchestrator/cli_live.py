"""The CLI's live output: a run's progress as it trains (``run``, ``resume``, ``sweep``), a job followed through
the store until it ends (``watch``, ``submit --follow``) and its logs followed (``logs -f``).

Part of the CLI (like ``cli.py``, it prints): live lines in a terminal, one plain line per finished epoch
elsewhere (CI logs, pipes), one JSON object per line with ``--json``. Nothing here exits: each follower
returns the job's final state and the command turns it into its exit code.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime

from rich.console import Console
from rich.live import Live
from rich.text import Text

from orchestrator.records import JobState
from orchestrator.render import epoch_line
from orchestrator.store import JobStore
from orchestrator.views import LiveSnapshot, LogLine, RunOutput, WatchEvent

FOLLOW_SECONDS = 1.0


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def drive_with_display(drive: Callable[[Callable[[LiveSnapshot], None]], RunOutput], as_json: bool) -> RunOutput:
    """Live lines in a terminal, one line per epoch elsewhere, nothing but the result with --json."""
    out = console()
    if as_json:
        return drive(lambda snapshot: None)
    print_epochs = epoch_printer(out)
    if not out.is_terminal:
        return drive(print_epochs)
    with Live(console=out, refresh_per_second=4, transient=True) as live:

        def on_update(snapshot: LiveSnapshot) -> None:
            print_epochs(snapshot)  # finished epochs stay in the scrollback, above the live lines
            live.update(snapshot.render())

        return drive(on_update)


def epoch_printer(out: Console) -> Callable[[LiveSnapshot], None]:
    """One line per finished epoch of the live run, printed once (the whole output for logs and pipes).

    A line is known by its epoch, branch, attempt and end: an epoch trained again (after a restore, or on a new
    branch after ``resume --from-epoch``) prints its new line; a superseded branch's epochs never print.
    """
    printed: set[tuple[int, int, int, str]] = set()

    def on_update(snapshot: LiveSnapshot) -> None:
        for record in snapshot.history:
            key = (record.epoch, record.branch, record.attempt, record.ended_at.isoformat())
            if key in printed:
                continue
            printed.add(key)
            epochs = snapshot.progress.epochs if snapshot.progress else snapshot.epochs
            out.print(epoch_line(snapshot.name, record, epochs), markup=False)

    return on_update


def follow_job(store: JobStore, job: str, as_json: bool) -> JobState:
    """Follow ``job`` through the store until it ends and return its final state: the live view in a terminal,
    one line per epoch elsewhere, then the line it ended with; with ``as_json``, the events of ``WatchEvents``
    (``jobs``), one JSON object per line.

    A job whose driver is known gone while its status stays active (``lifecycle.GoneWatch``: killed with
    ``kill -9``, its machine lost) never ends by itself: following stops with the reason, and the state
    returned is that active one (the command's exit code is then 1).
    """
    from orchestrator.commands import pending_commands
    from orchestrator.jobs import WatchEvents
    from orchestrator.lifecycle import GoneWatch
    from orchestrator.runner import read_snapshot

    spec = store.load_job(job).spec
    out = console()
    print_epochs = epoch_printer(out)
    gone = GoneWatch(store, job)

    def frame() -> LiveSnapshot:
        snapshot = read_snapshot(store, job, spec)
        return snapshot.model_copy(update={"pending": pending_commands(store, job)})

    def ended(snapshot: LiveSnapshot) -> bool:
        return snapshot.state.status.is_terminal() or gone.check(snapshot.state.status) is not None

    snapshot = frame()
    if as_json:
        stream = WatchEvents(job)
        while True:
            for event in stream.events(snapshot):
                json_line(event)
            if ended(snapshot):
                if gone.reason is not None:
                    json_line(WatchEvent(event="driver_gone", job=job, state=snapshot.state, reason=gone.reason))
                return snapshot.state
            time.sleep(FOLLOW_SECONDS)
            snapshot = frame()
    if out.is_terminal:
        with Live(console=out, refresh_per_second=4, transient=True) as live:
            while not ended(snapshot):
                print_epochs(snapshot)
                live.update(snapshot.render())
                time.sleep(FOLLOW_SECONDS)
                snapshot = frame()
    else:
        while not ended(snapshot):
            print_epochs(snapshot)
            time.sleep(FOLLOW_SECONDS)
            snapshot = frame()
    print_epochs(snapshot)
    state = snapshot.state
    if gone.reason is not None:
        out.print(driver_gone_line(job, state, gone.reason), markup=False, highlight=False)
        return state
    out.print(
        Text.assemble(
            (job, "bold"), " ended ", (state.status.value, "bold"), f": {state.reason}" if state.reason else ""
        )
    )
    return state


def driver_gone_line(job: str, state: JobState, reason: str) -> str:
    return (
        f"{job} is still {state.status.value} in the store, but its driver is gone: {reason}; "
        f"`orchestrator resume {job}` continues it from its newest backup, `orchestrator stop {job}` records it "
        "stopped"
    )


def json_line(event: WatchEvent | LogLine) -> None:
    sys.stdout.write(event.model_dump_json() + "\n")
    sys.stdout.flush()


def follow_logs(
    store: JobStore, job: str, sources: list[str], tail: int | None, since: datetime | None, as_json: bool
) -> str | None:
    """``logs -f``: each new line with its source (``worker-1 | ...``), or as a JSON object, until the job ends;
    returns why following stopped early (the driver known gone, ``lifecycle.GoneWatch``), else None."""
    from orchestrator.jobs import LogFollower
    from orchestrator.lifecycle import GoneWatch

    out = console()
    follower = LogFollower(store, job, sources, tail, since)
    gone = GoneWatch(store, job)
    while True:
        state = store.read_state(job)  # read first: the last lines are read after it
        ended = state.status.is_terminal() or gone.check(state.status) is not None
        for source, line in follower.poll():
            if as_json:
                json_line(LogLine(job=job, source=source, line=line))
            else:
                out.print(f"{source} | {line}", markup=False, highlight=False)
        if ended:
            if gone.reason is not None:
                console(stderr=True).print(driver_gone_line(job, state, gone.reason), markup=False, highlight=False)
            return gone.reason
        time.sleep(FOLLOW_SECONDS)
