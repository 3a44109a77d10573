"""How each fault kind is done to the running job (``chaos.plan.KINDS`` says what each is). Each injector
returns once the fault is done; waiting for the job to train again is the runner's. ``fault.note`` says what
the injection met."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from chaos.plan import Fault

if TYPE_CHECKING:
    from chaos.run import Chaos

JOB = "chaos"
NOTICE_S = 30.0  # a SIGTERMed worker still there after this is SIGKILLed, as a VM at the end of its notice
UPLOAD_WATCH_S = 30.0


def inject(chaos: Chaos, fault: Fault) -> None:
    {
        "sigkill": _signal,
        "sigterm": _signal,
        "drain": _drain,
        "raylet": _raylet,
        "driver": _driver,
        "upload": _upload,
        "outage": _outage,
        "set_lr": _set_lr,
        "stop": _stop,
    }[fault.kind](chaos, fault)


def _signal(chaos: Chaos, fault: Fault) -> None:
    pid, _ = chaos.workers()[fault.rank]
    number = signal.SIGKILL if fault.kind == "sigkill" else signal.SIGTERM
    os.kill(pid, number)
    fault.note = f"pid {pid}"
    if number == signal.SIGTERM:
        deadline = time.monotonic() + NOTICE_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            fault.note += f", still there {NOTICE_S:.0f} s after the notice: SIGKILLed"


def _alive(pid: int) -> bool:
    from orchestrator.lifecycle import process_alive

    return process_alive(pid)


def _spot_rank(chaos: Chaos) -> int | None:
    assert chaos.cluster is not None
    node = chaos.cluster.spot_node_id()[:12]
    return next((rank for rank, (_, where) in chaos.workers().items() if node.startswith(where[:12])), None)


def _drain(chaos: Chaos, fault: Fault) -> None:
    """Drain the spot node with a deadline; at the deadline its raylet goes with what runs on it; a new node."""
    assert chaos.cluster is not None
    rank = _spot_rank(chaos)
    chaos.cluster.drain_spot(fault.pause_s)
    drained = time.monotonic()
    chaos.sleep(max(0.0, drained + fault.pause_s - time.monotonic()))
    killed = chaos.cluster.lose_spot()
    chaos.cluster.add_spot()
    gone = "killed its raylet at the deadline" if killed else "its raylet had ended by itself before the deadline"
    fault.note = f"rank {rank} was on the drained node; {gone}; a new node joined"


def _raylet(chaos: Chaos, fault: Fault) -> None:
    assert chaos.cluster is not None
    rank = _spot_rank(chaos)
    chaos.cluster.lose_spot()
    lost = time.monotonic()
    chaos.cluster.add_spot()
    fault.note = f"rank {rank} was on the lost node; a new node joined {time.monotonic() - lost:.1f} s later"


def _driver(chaos: Chaos, fault: Fault) -> None:
    """Head loss: the driver SIGKILLed; its workers go with it (Ray ends a dead driver's job); `stop` records the
    job STOPPED as its driver is gone, and `resume` continues it from its latest backup."""
    pids = [pid for pid, _ in chaos.workers().values()]
    driver = chaos.kill_driver()
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:  # not seen; said in the note if it happens
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    stopped = chaos.cli("stop", JOB)
    if stopped.returncode != 0 or "driver is gone" not in stopped.stdout:
        raise chaos.failed(
            f"`orchestrator stop` after the driver's loss: exit {stopped.returncode}: {stopped.stdout}{stopped.stderr}"
        )
    chaos.start_driver("resume", JOB)
    fault.note = f"driver pid {driver} killed" + (f"; workers {left} outlived it, SIGKILLed" if left else "")
    fault.note += "; stop recorded STOPPED; resumed"


def _upload(chaos: Chaos, fault: Fault) -> None:
    """Watch the store's own listing for a backup whose files are arriving and whose manifest is not there yet,
    and SIGKILL rank 0 (the uploader) then."""
    prefix = f"store/jobs/{JOB}/checkpoints/"
    known = set(_folders(chaos, prefix))
    pid, _ = chaos.workers()[0]
    deadline = time.monotonic() + UPLOAD_WATCH_S
    while time.monotonic() < deadline and chaos.driver_ended() is None:
        for folder, files in _folders(chaos, prefix).items():
            if folder not in known and files and "manifest.json" not in files:
                os.kill(pid, signal.SIGKILL)
                fault.note = f"rank 0 (pid {pid}) SIGKILLed with backup {folder} at {len(files)} file(s), no manifest"
                return
            if "manifest.json" in files:
                known.add(folder)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    fault.note = f"no upload caught in flight within {UPLOAD_WATCH_S:.0f} s: rank 0 (pid {pid}) SIGKILLed anyway"


def _folders(chaos: Chaos, prefix: str) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {}
    for name in chaos.store.object_names(prefix):
        folder, _, file = name[len(prefix) :].partition("/")
        folders.setdefault(folder, set()).add(file)
    return folders


def _outage(chaos: Chaos, fault: Fault) -> None:
    chaos.store.stop()
    time.sleep(fault.pause_s)
    chaos.store.start()
    fault.note = "the store was unreachable, then back with its data"


def _set_lr(chaos: Chaos, fault: Fault) -> None:
    assert fault.learning_rate is not None
    done = chaos.cli("set-lr", JOB, f"{fault.learning_rate:g}", *(["--now"] if fault.now else []))
    if done.returncode != 0:
        raise chaos.failed(f"`orchestrator set-lr` exited {done.returncode}: {done.stdout}{done.stderr}")
    fault.note = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "recorded"


def _stop(chaos: Chaos, fault: Fault) -> None:
    from orchestrator.status import JobStatus

    done = chaos.cli("stop", JOB)
    if done.returncode != 0:
        raise chaos.failed(f"`orchestrator stop` exited {done.returncode}: {done.stdout}{done.stderr}")
    assert chaos.driver is not None
    code = chaos.driver.wait(timeout=300)
    state = chaos.read("read_state", JOB)
    if code == 0 and state is not None and state.status is JobStatus.SUCCEEDED:
        fault.note, fault.ended_job = "the job SUCCEEDED before the stop took effect: not resumed", True
        return
    if code == 0 or state is None or state.status is not JobStatus.STOPPED:
        raise chaos.failed(f"after `stop` the driver exited {code} with the job {state and state.status}")
    time.sleep(fault.pause_s)
    chaos.start_driver("resume", JOB)
    fault.note = f"STOPPED (driver exit {code}), resumed"
